# An app that cannot be imported while $MILLRACE_TEST_OUT/broken exists: a sidecar process restarted then fails
# to start (exit code 3), as it would on an import error or a port in use.
import os

from pydantic import BaseModel

from millrace import Key, Stream

if os.path.exists(os.path.join(os.environ.get("MILLRACE_TEST_OUT", "/tmp"), "broken")):
    raise RuntimeError("broken on purpose")


class M(BaseModel):
    id: Key[int]


a = Stream[M]("a")
b = Stream[M]("b")
a.add_transform(b, lambda m: m)
