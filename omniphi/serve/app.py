"""The FastAPI application: both APIs, the web page, the request guard (host, cross-site, auth,
size), CORS.

`create_app(engine_or_assistant, config)` is all a server (or a test) needs. Given an Assistant
it builds and owns the Engine (stopped at shutdown); given an Engine it only uses it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from omniphi.serve import conversations_api, openai_api
from omniphi.serve.engine import Engine
from omniphi.serve.errors import install_error_handlers, not_found
from omniphi.serve.guard import RequestGuard
from omniphi.serve.state import ServeConfig, ServeState
from omniphi.serve.store import Store

__all__ = ["ServeConfig", "ServeState", "create_app"]

WEB_DIR = Path(__file__).resolve().parent / "web"


def create_app(engine_or_assistant: Any, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    if isinstance(engine_or_assistant, Engine):
        engine, owns = engine_or_assistant, False
    else:
        engine, owns = Engine(engine_or_assistant, config.max_queue, config.request_timeout_s,
                              max_batch=config.max_batch), True
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

    app.add_middleware(RequestGuard, config=config)
    if config.cors_origins:  # outermost, so preflights are answered before auth
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


# The page's own scripts only: no inline script and nothing from elsewhere, so that markup slipping
# past DOMPurify in model output still cannot run; no framing (clickjacking). Attachments are shown
# from the page's origin, or from blob: URLs when an API key makes the page fetch them itself.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

# The page's files are not fingerprinted: browsers may keep them but must revalidate (ETag /
# Last-Modified make that a 304), so an upgrade shows up on the next load.
_PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}


class _StaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response
