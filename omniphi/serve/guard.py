"""Checks every request passes before any route runs (pure ASGI, so they also cover unknown routes,
static files and streams), in this order:

1. Host: only loopback names (plus `ServeConfig.allowed_hosts`). A DNS-rebinding page reaches a
   server on 127.0.0.1 under the attacker's own name; refusing that name keeps it from reading the
   stored conversations.
2. Cross-site writes: a POST/PUT/PATCH/DELETE whose `Origin` is another origin, or that the browser
   marks `Sec-Fetch-Site: cross-site`/`same-site`, is refused unless that origin is in
   `cors_origins`. Without an API key nothing else stops a page the user visits from creating
   conversations or running the model (JSON routes also refuse non-JSON bodies: see admission).
3. Bearer auth on /v1 and /api when an API key is set.
4. The request-size limit, by Content-Length up front and by counting streamed (chunked) bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniphi.serve.errors import ApiError, error_body
from omniphi.serve.state import LOOPBACK_HOSTS, ServeConfig

_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class RequestGuard:
    def __init__(self, app: ASGIApp, config: ServeConfig):
        self.app = app
        self.limit = config.max_request_bytes
        self.key = config.api_key.encode() if config.api_key else None
        self.any_host = "*" in config.allowed_hosts
        self.hosts = {_normal_host(h) for h in (*LOOPBACK_HOSTS, *config.allowed_hosts) if h != "*"}
        self.origins = {o.rstrip("/").lower() for o in config.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._host_error(scope) or self._cross_site_error(scope) or self._auth_error(scope)
        if error is None:
            error = self._length_error(scope)
        if error is not None:
            await _send_error(send, error)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)  # surfaces in the handler reading the body → 413
            return message

        await self.app(scope, counted, send)

    def host_allowed(self, host: str) -> bool:
        name = _normal_host(host)
        if self.any_host or name in self.hosts or name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _host_error(self, scope: Scope) -> ApiError | None:
        host = _header(scope, b"host")
        if host is None or self.host_allowed(host):  # no Host: not a browser (HTTP/1.0 tools)
            return None
        return ApiError(403, f"The host name {host!r} is not served here. Use localhost or 127.0.0.1, or start the "
                             "server with --allowed-host NAME to serve it under another name.", code="host_not_allowed")

    def _cross_site_error(self, scope: Scope) -> ApiError | None:
        if scope["method"] in _SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is not None and origin.rstrip("/").lower() in self.origins:
            return None
        fetch_site = (_header(scope, b"sec-fetch-site") or "").lower()
        cross = fetch_site in ("cross-site", "same-site")
        if origin is not None and not cross:
            own = (_header(scope, b"host") or "").lower()
            cross = origin == "null" or urlsplit(origin).netloc.lower() != own
        if not cross:
            return None
        return ApiError(403, "Cross-site requests that change data are refused (the request came from another web "
                             "site). Start the server with --cors-origin ORIGIN to allow a page on ORIGIN.",
                        code="cross_site_request")

    def _auth_error(self, scope: Scope) -> ApiError | None:
        path = scope["path"]
        if self.key is None or not (path.startswith(("/v1/", "/api/")) or path in ("/v1", "/api")):
            return None
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return None
        return ApiError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.",
                        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _length_error(self, scope: Scope) -> ApiError | None:
        length = _header(scope, b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return ApiError(400, "Invalid Content-Length header.", code="invalid_request")
        if int(length) > self.limit:
            return _too_large(self.limit)
        return None


def _normal_host(host: str) -> str:
    """"LocalHost:8000" → "localhost", "[::1]:8000" → "::1", "example.com." → "example.com"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than the server's limit of {limit} bytes.",
                    code="request_too_large")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error_body(error.status, error.message, type=error.type, param=error.param,
                                 code=error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
