"""Tokens per role and TLS, as every Millrace listener and client uses them.

Tokens travel as `authorization: Bearer <token>` (gRPC metadata). Each role's token comes from its environment
variable; a role whose token is unset is open (local development needs none). A listener refuses a missing or
unknown token with UNAUTHENTICATED and a token it knows as another role's with PERMISSION_DENIED.

TLS: a listener serves TLS only when given a certificate and key (PEM paths), and requires client certificates
signed by a CA when given one. A client speaks TLS to `https://` addresses, verifying the server with
MILLRACE_TLS_CA (else the system roots) and presenting MILLRACE_TLS_CLIENT_CERT and _KEY when both are set.

Tokens and key contents never appear in a message or a log line: messages name the environment variables only."""

from __future__ import annotations

import hmac
import os
import ssl
from typing import Optional

import grpc

# role -> the environment variable holding its token.
ROLES = {
    "admin": "MILLRACE_ADMIN_TOKEN",
    "worker": "MILLRACE_WORKER_TOKEN",
    "ingest": "MILLRACE_INGEST_TOKEN",
    "sidecar": "MILLRACE_SIDECAR_TOKEN",
}
HEADER = "authorization"


class SecurityError(ValueError):
    """A TLS or token setting that cannot be used; the message names the setting and says what to do."""


def token(role: str, env: Optional[dict] = None) -> Optional[str]:
    value = (env if env is not None else os.environ).get(ROLES[role], "")
    return value or None


# ---------------------------------------------------------------------------------------------------------------
# Listener side


def check(presented: Optional[str], expected: str, tokens: dict[str, Optional[str]]) -> Optional[tuple[grpc.StatusCode, str]]:
    """None when `presented` (the authorization header's value) is `expected`'s token or that role is open; else the
    code and message to refuse with. Every configured token is compared, in constant time, whatever matches."""
    mine = tokens.get(expected)
    if not mine:
        return None
    how = f"send `authorization: Bearer <token>` with the {expected} token ({ROLES[expected]})"
    scheme, _, secret = (presented or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return grpc.StatusCode.UNAUTHENTICATED, f"this {expected} listener requires a token: {how}"
    given = secret.strip().encode()
    matched = [role for role, t in sorted(tokens.items()) if t and hmac.compare_digest(given, t.encode())]
    if expected in matched:
        return None
    if matched:
        other = matched[0]
        return grpc.StatusCode.PERMISSION_DENIED, f"the {other} token ({ROLES[other]}) may not call this {expected} listener: {how}"
    return grpc.StatusCode.UNAUTHENTICATED, f"the token sent is not valid here: {how}"


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls to the services under `prefixes` (e.g. "/millrace.v1.FunctionRuntime/") without `role`'s
    token; other services (health, reflection) stay open."""

    def __init__(self, role: str, tokens: dict[str, Optional[str]], prefixes: tuple[str, ...]):
        self.role, self.tokens, self.prefixes = role, tokens, prefixes

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.prefixes):
            return handler
        presented = next((v for k, v in details.invocation_metadata or () if k == HEADER), None)
        refusal = check(presented, self.role, self.tokens)
        if refusal is None:
            return handler
        return _refusing(handler, *refusal)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def refuse(_request, context):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SecurityError(f"cannot read {what} {path!r} ({e.strerror or e}): give the path of a PEM file") from None


def server_credentials(cert: Optional[str], key: Optional[str], client_ca: Optional[str]) -> Optional[grpc.ServerCredentials]:
    """TLS credentials for a listener, or None for plaintext; SecurityError for settings that cannot work (checked
    with Python's ssl, so that a wrong file is named at start rather than failing every handshake)."""
    if bool(cert) != bool(key):
        raise SecurityError("TLS needs both a certificate and its key: give --tls-cert and --tls-key (MILLRACE_TLS_CERT, MILLRACE_TLS_KEY), or neither")
    if not cert:
        if client_ca:
            raise SecurityError("--tls-client-ca (MILLRACE_TLS_CLIENT_CA) needs TLS: give --tls-cert and --tls-key too")
        return None
    chain, private = _read(cert, "the TLS certificate (--tls-cert, MILLRACE_TLS_CERT)"), _read(key, "the TLS key (--tls-key, MILLRACE_TLS_KEY)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError):
        raise SecurityError(f"the TLS certificate {cert!r} and key {key!r} are not a PEM certificate and its matching private key (unencrypted)") from None
    roots = None
    if client_ca:
        roots = _read(client_ca, "the client CA (--tls-client-ca, MILLRACE_TLS_CLIENT_CA)")
        try:
            ssl.create_default_context(cadata=roots.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise SecurityError(f"the client CA {client_ca!r} holds no PEM certificate") from None
    return grpc.ssl_server_credentials([(private, chain)], root_certificates=roots, require_client_auth=roots is not None)


# ---------------------------------------------------------------------------------------------------------------
# Client side


def channel_credentials(env: Optional[dict] = None) -> grpc.ChannelCredentials:
    """A TLS client's credentials from MILLRACE_TLS_CA, MILLRACE_TLS_CLIENT_CERT and MILLRACE_TLS_CLIENT_KEY."""
    e = env if env is not None else os.environ
    ca, cert, key = (e.get(k) or None for k in ("MILLRACE_TLS_CA", "MILLRACE_TLS_CLIENT_CERT", "MILLRACE_TLS_CLIENT_KEY"))
    if bool(cert) != bool(key):
        raise SecurityError("a client certificate needs both MILLRACE_TLS_CLIENT_CERT and MILLRACE_TLS_CLIENT_KEY (PEM paths), or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "the CA of MILLRACE_TLS_CA") if ca else None,
        private_key=_read(key, "the client key of MILLRACE_TLS_CLIENT_KEY") if key else None,
        certificate_chain=_read(cert, "the client certificate of MILLRACE_TLS_CLIENT_CERT") if cert else None,
    )


def open_channel(target: str, tls: bool, options: Optional[list] = None) -> grpc.Channel:
    if tls:
        return grpc.secure_channel(target, channel_credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


class Credential:
    """The token a client sends, and the environment variable(s) a person sets to change it (for messages)."""

    def __init__(self, secret: Optional[str], role: str, env: str):
        self.secret, self.role, self.env = secret, role, env

    def __repr__(self) -> str:  # never the secret
        return f"Credential(role={self.role!r}, env={self.env!r}, set={bool(self.secret)})"

    def refusal(self, code: grpc.StatusCode, where: str, details: str) -> str:
        """What to tell a person whose call was refused for its token."""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            what = f"set {self.env} to the {self.role} token it was given" if not self.secret else f"{self.env} does not hold its {self.role} token: set it to that token"
        else:
            what = f"the token in {self.env} is not allowed this call: set it to the {self.role} token"
        return f"{where} refused the call ({code.name}: {details}): {what}"


def admin() -> Credential:
    return Credential(token("admin"), "admin", ROLES["admin"])


def catalog_reader() -> Credential:
    """Reads of the catalog: the ingest token if set (its least privilege), else the admin token."""
    ingest = token("ingest")
    if ingest:
        return Credential(ingest, "ingest", ROLES["ingest"])
    return Credential(token("admin"), "ingest", f"{ROLES['ingest']} (or {ROLES['admin']})")


AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the token to every call of a channel."""

    def __init__(self, secret: str):
        self.pair = (HEADER, f"Bearer {secret}")

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_Details(details, self.pair), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_Details(details, self.pair), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, pair):
        self.method, self.timeout, self.credentials = d.method, d.timeout, d.credentials
        self.wait_for_ready, self.compression = getattr(d, "wait_for_ready", None), getattr(d, "compression", None)
        self.metadata = [*(d.metadata or ()), pair]


def with_token(channel: grpc.Channel, secret: Optional[str]) -> grpc.Channel:
    return grpc.intercept_channel(channel, _Bearer(secret)) if secret else channel
