"""One place that turns exceptions into OpenAI-shaped error answers.

Every error, on `/v1` and on `/api`, is `{"error": {"message", "type", "param", "code"}}` with
the status the official `openai` client maps to its typed exceptions (400 BadRequestError,
401 AuthenticationError, 404 NotFoundError, 422 UnprocessableEntityError, 429 RateLimitError,
5xx InternalServerError). Tracebacks are logged, never sent.

Wrong types in a request body are 400 (as OpenAI answers them), not FastAPI's default 422.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from omniphi.media import MediaError, MediaTooLargeError
from omniphi.processing import SampleTooLongError
from omniphi.runtime.remote import RemoteRejectedError, RemoteUnavailableError
from omniphi.runtime.transcripts import TranscriptionUnavailableError
from omniphi.serve.engine import EngineError, EngineStopped, QueueFull, RequestTimedOut

log = logging.getLogger("omniphi.serve")

# The `type` OpenAI uses per status; the client only looks at the status, people read the type.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error meant for the client, with everything its body and headers need."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str = "not_found") -> ApiError:
    return ApiError(404, message, param=param, code=code)


def from_media_error(error: MediaError, param: str | None = None) -> ApiError:
    """Bad media is the request's fault: 400 `invalid_request_error` (as OpenAI and vLLM answer, so
    the `openai` client raises BadRequestError), 413 when over a size limit; the media's `code`
    says precisely what is wrong."""
    status = 413 if isinstance(error, MediaTooLargeError) else 400
    return ApiError(status, str(error) or "invalid media", param=param, code=error.code)


def error_body(status: int, message: str, *, type: str | None = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def param_from_loc(loc) -> str | None:
    """pydantic's error location as OpenAI writes `param`: `messages[0].content[1].image_url`.

    Union members appear in `loc` as type names ("str", "list[dict[str,any]]"); they are not
    fields and are left out. FastAPI prefixes body errors with "body"."""
    out = ""
    for i, item in enumerate(loc):
        if isinstance(item, int):
            out += f"[{item}]"
            continue
        item = str(item)
        if (i == 0 and item in ("body", "query", "path", "header")) or not item.isidentifier() or item in _TYPE_NAMES:
            continue
        out += f".{item}" if out else item
    return out or None


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def from_validation_errors(errors, prefix: tuple = ()) -> ApiError:
    """The first pydantic error as a 400 with `param` (OpenAI reports one problem at a time)."""
    if not errors:
        return bad_request("Invalid request.")
    first = errors[0]
    param = param_from_loc(tuple(prefix) + tuple(first.get("loc", ())))
    kind = first.get("type", "")
    msg = first.get("msg", "invalid value")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'." if param else "Missing required parameter."
        code = "missing_required_parameter"
    else:
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
        code = "invalid_type" if kind.endswith("_type") else "invalid_value"
    return bad_request(message, param=param, code=code)


def status_and_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; unknown ones are logged as 500s."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code), exc.headers
    if isinstance(exc, MediaError):
        return status_and_body(from_media_error(exc))
    if isinstance(exc, QueueFull):
        # Retry-After: the official client honours it (and retries 429s by itself).
        return 429, error_body(429, str(exc), code="queue_full"), {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, EngineStopped):
        return 503, error_body(503, str(exc), code="engine_unavailable"), {"Retry-After": "5"}
    if isinstance(exc, RequestTimedOut):
        return 503, error_body(503, str(exc), type="timeout_error", code="timeout"), {}
    if isinstance(exc, ValidationError):
        api = from_validation_errors(exc.errors())
        return status_and_body(api)
    # Errors of the model side that are the request's fault.
    if isinstance(exc, SampleTooLongError):
        return 400, error_body(400, str(exc), code="context_length_exceeded"), {}
    if isinstance(exc, TranscriptionUnavailableError):
        return 400, error_body(400, str(exc), code="transcription_unavailable"), {}
    # --engine vllm: what the model server said of the request, or that it is gone.
    if isinstance(exc, RemoteRejectedError):
        return 400, error_body(400, str(exc), code="rejected_by_model_server"), {}
    if isinstance(exc, RemoteUnavailableError):
        return 503, error_body(503, str(exc), code="model_server_unavailable"), {"Retry-After": "5"}
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    return 500, error_body(500, "The server had an error while processing your request.", code="internal_error"), {}


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = status_and_body(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handle_any(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # FastAPI reports an unparsable JSON body as a validation error of type json_invalid.
        if errors and errors[0].get("type") == "json_invalid":
            return error_response(bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload.)", code="invalid_json"))
        return error_response(from_validation_errors(errors))

    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            code = "unknown_url"
        elif status == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
            code = "method_not_allowed"
        else:
            message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            code = None
        return JSONResponse(error_body(status, message, code=code), status_code=status,
                            headers=dict(exc.headers or {}))

    app.add_exception_handler(ApiError, handle_any)
    app.add_exception_handler(MediaError, handle_any)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(EngineError, handle_any)
    # Exception goes to ServerErrorMiddleware: it answers with our body and logs the traceback.
    app.add_exception_handler(Exception, handle_any)
