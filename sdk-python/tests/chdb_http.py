"""A modern ClickHouse (chdb's, 26.x) behind ClickHouse's HTTP interface, for tests: the machine's server is 18.16,
and chdb runs ClickHouse in-process with no server of its own. Only what Millrace's clients use is answered:

* the control plane (`clickhouse` crate 0.15, compression off): POST with the SQL as the body, no FORMAT in it and
  `default_format=RowBinary` for fetches, query settings and `database` as URL parameters, user and password as
  `X-ClickHouse-User`/`X-ClickHouse-Key` headers (not checked here: chdb has one user);
* the worker (worker/src/clickhouse.rs): POST `?query=INSERT ... FORMAT JSONEachRow` with the rows as a chunked
  body, and the settings of its `--clickhouse-url` as URL parameters;
* the tests: `SELECT ... FORMAT JSONEachRow` as a body, `/ping`, `GET /?query=...`.

Errors are answered as ClickHouse answers them, since both clients act on them: the status from the exception
(ClickHouse's exceptionCodeToHTTPStatus), the body `Code: N. DB::Exception: ...` and the header
`X-ClickHouse-Exception-Code: N` (the worker tells a bad row from anything else by that code).

    python sdk-python/tests/chdb_http.py --port 18123 --path /tmp/chdb-data
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

# URL parameters of the HTTP interface itself; every other one is a ClickHouse setting for that query alone
# (ClickHouse's HTTPHandler does the same split). `param_<name>` are query parameters (`{name:Type}`).
NOT_SETTINGS = {
    "query", "database", "user", "password", "quota_key", "default_format", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression", "buffer_size",
    "wait_end_of_query", "role", "stacktrace", "client_protocol_version", "http_zlib_compression_level",
}  # fmt: skip

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by the error's name,
# which chdb's message ends with ("... (UNKNOWN_TABLE)"); anything else is 500.
STATUS = {
    401: "REQUIRED_PASSWORD",
    403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
    400: """BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE CANNOT_PARSE_QUOTED_STRING
        CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6 CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN
        ILLEGAL_COLUMN UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST
        UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE""",
    404: """UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE UNKNOWN_DATABASE
        UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION UNKNOWN_FORMAT
        UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE""",
    413: "QUERY_IS_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
    503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
    411: "HTTP_LENGTH_REQUIRED",
    408: "TIMEOUT_EXCEEDED",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
STATUS_OF = {name: status for status, names in STATUS.items() for name in names.split()}


def quote(value: str) -> str:
    """A ClickHouse string literal (a setting given as a string is converted to its type, as over HTTP)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseError(Exception):
    def __init__(self, message: str):
        m = re.match(r"Code: (\d+)\.", message)
        # Anything chdb raises without a code (a Python-level error) is what ClickHouse calls a std::exception.
        self.code = int(m.group(1)) if m else 1001
        self.text = message if m else f"Code: 1001. DB::Exception: {message}. (STD_EXCEPTION)"
        name = re.search(r"\(([A-Z_0-9]+)\)\s*$", self.text)
        self.status = STATUS_OF.get(name.group(1) if name else "", 500)
        super().__init__(self.text)


class Engine:
    """One chdb session. chdb runs one query at a time per session, and the per-query settings are applied to the
    session around the query (SET, then restored), so every query holds the lock from its first SET to its last
    restore: no query ever sees another's settings or database."""

    def __init__(self, path: str):
        import chdb.session  # imported here so that `--help` works without chdb

        self.session = chdb.session.Session(path)
        self.lock = threading.Lock()

    def _query(self, sql: str, fmt: str = "TabSeparated", params: dict | None = None) -> bytes:
        try:
            result = self.session.query(sql, fmt, params=params or None) if params else self.session.query(sql, fmt)
        except Exception as e:  # chdb raises ChdbError (a RuntimeError) with ClickHouse's own message
            raise ClickHouseError(str(e).strip()) from None
        return b"" if result is None else result.bytes()

    def run(self, sql: str, fmt: str, settings: dict[str, str], database: str | None, params: dict[str, str]) -> bytes:
        with self.lock:
            undo: list[str] = []
            try:
                if database:
                    before = self._query("SELECT currentDatabase()").decode().strip()
                    self._query(f"USE `{database.replace('`', '``')}`")
                    undo.append(f"USE `{before.replace('`', '``')}`")
                for name, value in settings.items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                        raise ClickHouseError(f"Code: 115. DB::Exception: Unknown setting '{name}'. (UNKNOWN_SETTING)")
                    # Restored to what the session had: chdb's own defaults differ from a server's for some.
                    old = self._query(f"SELECT value, changed FROM system.settings WHERE name = {quote(name)}", "JSONEachRow")
                    self._query(f"SET {name} = {quote(value)}")  # an unknown setting fails here, as ClickHouse does
                    was = json.loads(old) if old.strip() else {}
                    undo.append(f"SET {name} = " + (quote(was["value"]) if was.get("changed") else "DEFAULT"))
                return self._query(sql, fmt, params)
            finally:
                for stmt in reversed(undo):
                    try:
                        self._query(stmt)
                    except ClickHouseError as e:
                        print(f"[chdb_http] could not restore with {stmt!r}: {e}", file=sys.stderr)

    def close(self) -> None:
        with self.lock:
            self.session.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: both clients pool connections; every answer has a Content-Length
    engine: Engine
    verbose = False

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The worker streams its rows (hyper, chunked); http.server does not decode chunked bodies itself.
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
            body = bytes(out)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding in ("gzip", "deflate"):  # ClickHouse takes these; neither client sends them with compression off
            body = zlib.decompress(body, 47)
        return body

    def _handle(self) -> None:
        url = urlsplit(self.path)
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self._body() if self.command == "POST" else b""
        if url.path in ("/ping", "/replicas_status") or (url.path == "/" and "query" not in args and not body):
            return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if url.path != "/":
            return self._send(404, f"There is no handle {url.path}\n".encode())
        # ClickHouse reads `query` + "\n" + the body as one text: an INSERT's data follows its statement there.
        sql = (args["query"] + "\n" if args.get("query") else "") + body.decode("utf-8", "surrogateescape")
        fmt = args.get("default_format") or "TabSeparated"  # a FORMAT clause in the SQL takes precedence
        settings = {k: v for k, v in args.items() if k not in NOT_SETTINGS and not k.startswith("param_")}
        params = {k[6:]: v for k, v in args.items() if k.startswith("param_")}
        if self.verbose:
            print(f"[chdb_http] {settings or ''} {sql[:300]!r}", file=sys.stderr)
        try:
            out = self.engine.run(sql, fmt, settings, args.get("database"), params)
        except ClickHouseError as e:
            print(f"[chdb_http] {e.status} {e.text[:500]} <- {sql[:300]!r}", file=sys.stderr)
            headers = {"X-ClickHouse-Exception-Code": str(e.code), "Content-Type": "text/plain; charset=UTF-8"}
            return self._send(e.status, (e.text + "\n").encode(), headers)
        binary = fmt.startswith(("RowBinary", "Native", "Parquet", "Arrow"))  # (the clients read no Content-Type)
        ctype = "application/octet-stream" if binary else "text/plain; charset=UTF-8"
        self._send(200, out, {"Content-Type": ctype, "X-ClickHouse-Format": fmt})

    do_GET = do_POST = do_HEAD = _handle

    def log_message(self, format: str, *args) -> None:  # errors are printed in _handle; requests only if verbose
        if self.verbose:
            super().log_message(format, *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--path", required=True, help="chdb's data directory (made if missing)")
    ap.add_argument("--verbose", action="store_true", help="log every query")
    a = ap.parse_args()
    Handler.engine, Handler.verbose = Engine(a.path), a.verbose
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    # SIGTERM stops serving and closes the session (chdb flushes its parts) instead of dying mid-write.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"[chdb_http] ClickHouse {Handler.engine.run('SELECT version()', 'TSV', {}, None, {}).decode().strip()} "
          f"on http://{a.host}:{a.port} (data in {a.path})", file=sys.stderr, flush=True)  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        Handler.engine.close()


if __name__ == "__main__":
    main()
