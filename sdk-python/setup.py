"""Generates the gRPC stubs for the contract (proto/millrace/v1/*.proto) into millrace/v1 at build time."""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def proto_dir() -> Path:
    d = Path(os.environ.get("MILLRACE_PROTO_DIR", HERE.parent / "proto"))
    if not (d / "millrace" / "v1").is_dir():
        raise SystemExit(f"millrace: the contract's .proto files are not in {d}: build from a Millrace checkout, or set MILLRACE_PROTO_DIR")
    return d


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    src = proto_dir()
    protos = sorted(str(p.relative_to(src)) for p in (src / "millrace" / "v1").glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("millrace: protoc failed on the contract's .proto files")
    (out / "millrace" / "v1" / "__init__.py").write_text('"""The contract\'s generated stubs (made at build time)."""\n')


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithStubs})
