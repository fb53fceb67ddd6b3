"""Who may see the console. It binds loopback by default; any other address needs a token file
(owner-only, compared in constant time) and TLS, or the console refuses to start."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfl.errors import MmflError

MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; ``0.0.0.0``, ``::`` and names are not."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> bytes:
    """The console's access token: the file's first line, at least 16 characters, in a file only
    its owner may read or write (0600 or 0400)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise MmflError(f"token file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MmflError(f"token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise MmflError(
            f"token file {path} is readable by others (mode {oct(info.st_mode & 0o777)}); chmod 600 it"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise MmflError(f"token file {path} holds fewer than {MIN_TOKEN_CHARS} characters on its first line")
    return token.encode("utf-8")


@dataclass(frozen=True)
class Exposure:
    """Where the console listens and what protects it."""

    host: str
    port: int
    token: bytes | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def allowed_hosts(self) -> list[str]:
        """``Host`` headers served: loopback names when bound to loopback (a web page elsewhere
        cannot rebind its name to 127.0.0.1 and read the console), any when the token guards it."""
        return list(LOOPBACK_NAMES) if is_loopback(self.host) else ["*"]


def plan_exposure(
    host: str,
    port: int,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    default_tls: tuple[Path, Path] | None = None,
) -> Exposure:
    """Check the settings; a non-loopback ``host`` needs ``token_file`` and a certificate and key
    (``default_tls``: the coordinator's own, used when none is given)."""
    if (tls_cert is None) != (tls_key is None):
        raise MmflError("give both --tls-cert and --tls-key, or neither")
    token = read_token(token_file) if token_file is not None else None
    if not is_loopback(host):
        if token is None:
            raise MmflError(
                f"the console on {host} (not loopback) needs --token-file (a 0600 file with a secret) and TLS; "
                "or keep the default --host 127.0.0.1"
            )
        if tls_cert is None and default_tls is not None:
            tls_cert, tls_key = default_tls
        if tls_cert is None:
            raise MmflError(f"the console on {host} (not loopback) needs TLS: give --tls-cert and --tls-key")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise MmflError(f"TLS file {path} does not exist")
    return Exposure(host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key)


def presented_token(authorization: str) -> bytes | None:
    """The secret in an ``Authorization`` header: ``Bearer TOKEN`` or ``Basic`` with the token as
    password (browsers ask for it; the user name is ignored)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode("utf-8")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


class TokenAuth:
    """ASGI middleware: every HTTP request (pages, data, static files) carries the token, else 401."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = presented_token(headers.get(b"authorization", b"").decode("latin-1"))
        if given is not None and hmac.compare_digest(given, self.token):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="mmfl console", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"authentication required\n"})


SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """ASGI middleware: a strict Content-Security-Policy and no caching on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in names),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)
