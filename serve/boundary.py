"""The browser boundary (docs/security.md): every web page the user opens can reach a server on 127.0.0.1, so each
request is checked before any handler sees it.

- Host: a name outside the allow-list is refused (DNS rebinding: a page on `evil.test` re-pointed at 127.0.0.1
  sends `Host: evil.test`). Loopback names, IP literals (a rebinding needs a name), the `--host` given and
  `--allowed-host` names pass.
- Origin: a request that carries a foreign Origin (a page of another site) is refused, whatever its method, unless
  `--cors-origin` allows that origin; then it gets CORS headers and its preflight is answered. The server's own
  origin (the page it serves) always passes.
- Page paths (`own_only`, the built-in page's API under /ui/): only the server's own origin, even when
  `--cors-origin` allows another: another site's page may never run a tool, whatever CORS says.
- Content type: a POST must say `application/json`; a page can send `text/plain` (or a typeless Blob) without a
  preflight, JSON never, so this closes the no-preflight route even for a client that sends no Origin.
An ASGI middleware, so it runs before routing and body reading: a refused request runs nothing."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from toolace.errors import InputError
from toolace.limits import CORS_MAX_AGE_SECONDS, MAX_ALLOWED_HOSTS, MAX_API_KEY_FILE_CHARS

from .errors import error_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})  # binding these says nothing about the name clients use
JSON_TYPES = ("application/json",)  # plus any `+json` suffix type (RFC 6839)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
REASONS = {"host": "host_not_allowed", "origin": "origin_not_allowed", "content_type": "unsupported_media_type"}
API_KEY_ENV = "TOOLACE_API_KEY"  # the key from the environment, where other local users' `ps` cannot see it
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "authorization, content-type, x-api-key, anthropic-version, x-toolace-token"


def host_name(host_header: str) -> str:
    """The name part of a Host header (`[::1]:8000` → `::1`, `Example:80` → `example`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allowed_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """`--allowed-host` values: bare host names (no scheme, port or path); `*` turns the Host check off."""
    out = []
    for raw in names:
        name = raw.strip().lower()
        if name != "*" and (not name or any(c in name for c in "/:@ ") or len(name) > 253):
            raise InputError(f"allowed host {raw!r}: give a bare host name such as 'myhost.lan' (no scheme or port)")
        out.append(name)
    if len(out) > MAX_ALLOWED_HOSTS:
        raise InputError(f"at most {MAX_ALLOWED_HOSTS} allowed hosts, got {len(out)}")
    return tuple(out)


def check_cors_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """`--cors-origin` values: `scheme://host[:port]` exactly as a browser sends it, or `*`."""
    out = []
    for raw in origins:
        origin = raw.strip().rstrip("/").lower()
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not sep or not rest or "/" in rest):
            raise InputError(f"CORS origin {raw!r}: give scheme://host[:port] (e.g. http://localhost:3000) or '*'")
        out.append(origin)
    if len(out) > MAX_ALLOWED_HOSTS:
        raise InputError(f"at most {MAX_ALLOWED_HOSTS} CORS origins, got {len(out)}")
    return tuple(out)


class Boundary:
    """Host allow-list, Origin check with opt-in CORS, and JSON-only bodies, in front of `app`."""

    def __init__(self, app: ASGIApp, bind_host: str = "127.0.0.1", allowed_hosts: Iterable[str] = (),
                 cors_origins: Iterable[str] = (), refused: dict[str, int] | None = None,
                 error_shape: Callable[..., dict[str, Any]] | None = None, own_only: Iterable[str] = ()) -> None:
        self.app = app
        self.own_only = tuple(own_only)  # path prefixes no other origin may use, CORS or not
        hosts = set(LOOPBACK_NAMES) | set(check_allowed_hosts(allowed_hosts))
        if bind_host.lower() not in WILDCARD_BINDS:
            hosts.add(host_name(bind_host))
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts)
        self.origins = frozenset(check_cors_origins(cors_origins))
        self.error_shape = error_shape
        self.refused = refused if refused is not None else {}  # requests refused, by reason (/health shows them)
        for reason in REASONS:
            self.refused.setdefault(reason, 0)

    def host_ok(self, host: str | None) -> bool:
        if host is None or self.any_host:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = host_name(host)
        return name in self.hosts or name.endswith(".localhost") or _is_ip(name)

    def cors_allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.lower() in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin, method = headers.get("host"), headers.get("origin"), scope["method"]
        if not self.host_ok(host):
            await self._refuse(scope, send, "host", 403, f"Host {host!r} is not allowed: this server answers "
                               "loopback names and --allowed-host names (protection against DNS rebinding)")
            return
        cors = origin is not None and origin.lower() not in _own_origins(host)
        if cors and scope["path"].startswith(self.own_only or ("\0",)):
            await self._refuse(scope, send, "origin", 403, f"Origin {origin!r} is not allowed: only the page this "
                               "server serves may use its page endpoints (they run tools)")
            return
        if cors and not self.cors_allows(origin or ""):
            await self._refuse(scope, send, "origin", 403, f"Origin {origin!r} is not allowed: a web page of "
                               "another site may not use this server (start it with --cors-origin to allow one)")
            return
        if cors and method == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(send, origin or "")
            return
        if method in BODY_METHODS and not _is_json(headers.get("content-type")):
            await self._refuse(scope, send, "content_type", 415, "Content-Type must be application/json, got "
                               f"{headers.get('content-type', 'none')!r}")
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_cors_headers(origin or "")]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _refuse(self, scope: Scope, send: Send, what: str, status: int, message: str) -> None:
        self.refused[what] += 1
        code = REASONS[what]
        body = (self.error_shape(scope["path"], status, message, "invalid_request_error", code)
                if self.error_shape else error_body(message, "invalid_request_error", code))
        await _respond(send, status, json.dumps(body).encode(), [(b"content-type", b"application/json")])

    async def _preflight(self, send: Send, origin: str) -> None:
        headers = [*_cors_headers(origin), (b"access-control-allow-methods", CORS_METHODS.encode()),
                   (b"access-control-allow-headers", CORS_HEADERS.encode()),
                   (b"access-control-max-age", str(CORS_MAX_AGE_SECONDS).encode())]
        await _respond(send, 204, b"", headers)


def _own_origins(host: str | None) -> tuple[str, ...]:
    """The origins of a page this server itself served under that Host (the built-in page)."""
    if host is None:
        return ()
    host = host.strip().lower()
    return (f"http://{host}", f"https://{host}")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def resolve_api_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The key from the flag, else the first line of the file, else $TOOLACE_API_KEY; None when none is set."""
    if api_key is not None and api_key_file is not None:
        raise InputError("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            text = Path(api_key_file).read_text(encoding="utf-8")[:MAX_API_KEY_FILE_CHARS]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the API key file {api_key_file}: {e}") from None
        api_key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not api_key:
            raise InputError(f"the API key file {api_key_file} is empty")
    elif api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    return api_key
