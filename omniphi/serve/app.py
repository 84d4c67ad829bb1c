"""The FastAPI application: both APIs, the web page, auth, request limits, CORS.

`create_app(engine_or_assistant, config)` is all a server (or a test) needs. Given an Assistant
it builds and owns the Engine (stopped at shutdown); given an Engine it only uses it.
"""

from __future__ import annotations

import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniphi.chat import AudioMode, GenerationSettings
from omniphi.media import MediaLimits
from omniphi.serve import conversations_api, openai_api
from omniphi.serve.engine import Engine
from omniphi.serve.errors import ApiError, error_body, install_error_handlers, not_found
from omniphi.serve.store import Store

WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass
class ServeConfig:
    api_key: str | None = None
    data_dir: str | Path | None = None  # None: $OMNIPHI_DATA or ~/.local/share/omniphi
    allow_remote_media: bool = False  # server-side fetching of http(s) image URLs is an SSRF hole
    cors_origins: list[str] = field(default_factory=list)  # none: same-origin only
    max_request_bytes: int = 32 * 2**20
    max_images: int = 8
    max_audio_clips: int = 4
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    max_queue: int = 8
    request_timeout_s: float = 300.0
    # Defaults for the page (GET /api/settings/defaults) and for requests that leave them out.
    system_prompt: str = "You are a helpful assistant. Answer clearly and concisely."
    # None: the model's own (its generation_config.json; greedy where it says nothing)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    audio_mode: AudioMode = "native"

    def generation(self, model_defaults: GenerationSettings) -> GenerationSettings:
        """What a request that sets nothing gets: this config's values over the model's."""
        chosen = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_tokens}
        return replace(model_defaults, **{k: v for k, v in chosen.items() if v is not None}).validate()


@dataclass
class ServeState:
    config: ServeConfig
    engine: Engine
    store: Store
    owns_engine: bool
    generation: GenerationSettings  # the defaults of every request (ServeConfig.generation)
    started_at: float = field(default_factory=time.time)


def create_app(engine_or_assistant: Any, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    if isinstance(engine_or_assistant, Engine):
        engine, owns = engine_or_assistant, False
    else:
        engine, owns = Engine(engine_or_assistant, config.max_queue, config.request_timeout_s), True
    store = Store(config.data_dir)
    serve_state = ServeState(config, engine, store, owns, config.generation(engine.assistant.generation_defaults))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owns:
            engine.stop()  # cancels the running generation; its partial answer is stored first
        store.close()

    # No /docs: the Swagger page loads scripts from a CDN, and this server is meant to work offline.
    app = FastAPI(title="omniphi", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.omniphi = serve_state
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(conversations_api.router)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = WEB_DIR / "index.html"
        if not page.is_file():
            raise not_found("The web page is not installed.")
        return FileResponse(page, headers=_PAGE_HEADERS)

    app.mount("/static", _StaticFiles(directory=WEB_DIR, check_dir=False), name="static")

    app.add_middleware(_Guard, config=config)
    if config.cors_origins:  # outermost, so preflights are answered before auth
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


# The page's files are not fingerprinted: browsers may keep them but must revalidate (ETag /
# Last-Modified make that a 304), so an upgrade shows up on the next load.
_PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class _StaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response


class _Guard:
    """Pure ASGI (so it also covers unknown routes and streams): bearer auth on /v1 and /api, and
    the request-size limit, by Content-Length up front and by counting streamed (chunked) bytes."""

    def __init__(self, app: ASGIApp, config: ServeConfig):
        self.app = app
        self.limit = config.max_request_bytes
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.key is not None and (path.startswith(("/v1/", "/api/")) or path in ("/v1", "/api")):
            if not self._authorized(scope):
                await _send_error(send, ApiError(
                    401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
                return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(send, ApiError(400, "Invalid Content-Length header.", code="invalid_request"))
                return
            if int(length) > self.limit:
                await _send_error(send, _too_large(self.limit))
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

    def _authorized(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.key)


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
