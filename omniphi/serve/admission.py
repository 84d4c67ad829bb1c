"""Request admission, one place for `/v1` and `/api`: what a request body must be before any work
is done or anything is stored.

* JSON bodies: `Content-Type: application/json` (a cross-site page can send `text/plain` without a
  CORS preflight, never `application/json`), at most `MAX_JSON_DEPTH` levels of nesting, text that
  is valid Unicode (a lone surrogate such as "\\ud800" cannot be encoded, stored or tokenised),
  integers within 64 bits and no NaN/Infinity; then the route's pydantic model.
* Media: counted against the per-request limits, decoded by `omniphi.media` with the server's
  limits (call these in a worker thread), failures as 4xx `ApiError`s with the part's `param`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import ValidationError

from omniphi.media import MediaError, MediaTooLargeError, decode_data_uri, load_audio, load_image
from omniphi.serve.errors import ApiError, bad_request, from_media_error, from_validation_errors
from omniphi.serve.state import ServeConfig, ServeState

MAX_JSON_DEPTH = 64
_INT64 = (-(2**63), 2**63 - 1)

# Mime types a stored attachment is served back with. Anything else is stored as an opaque
# download: a client-declared type must never make the browser render stored bytes as HTML/SVG.
IMAGE_MIMES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
AUDIO_MIMES = {"audio/webm", "audio/ogg", "audio/mpeg", "audio/mp3", "audio/wav", "audio/x-wav", "audio/wave",
               "audio/flac", "audio/x-flac", "audio/mp4", "audio/aac", "audio/x-m4a", "audio/opus"}


# --------------------------------------------------------------------------- JSON bodies

_NOT_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
             "HTTP library correctly. The API expects a JSON payload.)")


def is_json_content_type(value: str | None) -> bool:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


async def parse_json_body(request: Request, model: type, *, empty_ok: bool = False):
    """The request's JSON body, admitted (see the module's docstring) and validated by a pydantic
    `model`: every failure is a 4xx `invalid_request_error` with `param` where there is one."""
    raw = await request.body()
    if not raw.strip() and empty_ok:
        data: Any = {}
    else:
        if not is_json_content_type(request.headers.get("content-type")):
            raise ApiError(415, "The request body must be JSON sent with 'Content-Type: application/json'.",
                           code="unsupported_content_type")
        try:
            data = json.loads(raw, parse_constant=_refuse_constant)
        except RecursionError:
            raise bad_request(f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.",
                              code="json_too_deep") from None
        except (ValueError, UnicodeDecodeError):
            raise bad_request(_NOT_JSON, code="invalid_json") from None
        check_json_values(data)
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise from_validation_errors(error.errors()) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def check_json_values(data: Any) -> None:
    """Depth, Unicode validity and integer range of parsed JSON, without recursion (so that depth
    itself cannot exhaust the stack); the first problem is a 400 naming its `param`."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                param = _param(path)
                raise bad_request(f"Invalid value for '{param}': integer out of range (64 bits at most).",
                                  param, "integer_out_of_range")
        elif depth >= MAX_JSON_DEPTH:
            raise bad_request(f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.",
                              _param(path), "json_too_deep")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                stack.append((item, path + (key,), depth + 1))
        else:  # list
            stack.extend((item, path + (i,), depth + 1) for i, item in enumerate(value))


def _check_text(text: str, path: tuple) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        param = _param(path)
        raise bad_request(f"Invalid text{f' in {param!r}' if param else ''}: it contains a lone surrogate "
                          f"(U+{ord(text[error.start]):04X}), which is not valid Unicode.", param,
                          "invalid_unicode") from None


def _param(path: tuple) -> str | None:
    """("messages", 0, "content") → "messages[0].content", as OpenAI writes `param`."""
    out = ""
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out or None


# --------------------------------------------------------------------------- media


class MediaCounter:
    """Images and audio clips of one request, against the server's per-request limits."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.images = 0
        self.clips = 0

    def count(self, kind: str, param: str, per: str = "request") -> None:
        if kind == "image":
            self.images += 1
            if self.images > self.config.max_images:
                raise bad_request(f"Too many images: at most {self.config.max_images} per {per}.", param,
                                  "too_many_images")
        else:
            self.clips += 1
            if self.clips > self.config.max_audio_clips:
                raise bad_request(f"Too many audio clips: at most {self.config.max_audio_clips} per {per}.", param,
                                  "too_many_audio_clips")


def image_from_url(url: str, param: str, st: ServeState) -> Image.Image:
    """An `image_url` (a data: URI, or http(s) with --allow-remote-media) decoded."""
    limits = st.config.media_limits
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    try:
        if scheme == "data":
            _mime, data = decode_data_uri(url, limits.max_image_bytes)
        elif scheme in ("http", "https"):
            if not st.config.allow_remote_media:
                raise bad_request("Remote image URLs are disabled on this server (start it with "
                                  "--allow-remote-media to allow them); send the image as a data: URI.",
                                  param, "remote_media_disabled")
            data = _fetch_remote(url, limits.max_image_bytes, param)
        else:
            raise bad_request("Invalid image URL: expected a data: URI (or http(s) with --allow-remote-media).",
                              param, "invalid_image_url")
        return load_image(data, limits)
    except MediaError as error:
        raise from_media_error(error, param) from None


def audio_from_base64(text: str, param: str, st: ServeState) -> np.ndarray:
    """`input_audio.data` (base64, or a whole data: URI as some clients send) decoded."""
    limits = st.config.media_limits
    try:
        if text[:5].lower() == "data:":
            _mime, data = decode_data_uri(text, limits.max_audio_bytes)
        else:
            compact = "".join(text.split())
            if len(compact) * 3 // 4 > limits.max_audio_bytes + 2:  # refuse before decoding
                raise MediaTooLargeError(f"audio is over the limit of {limits.max_audio_bytes} bytes")
            try:
                data = base64.b64decode(compact, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request("input_audio.data is not valid base64.", param, "invalid_base64") from None
        return load_audio(data, limits)
    except MediaError as error:
        raise from_media_error(error, param) from None


def audio_upload(data: bytes, param: str, st: ServeState) -> np.ndarray:
    """An uploaded audio file's bytes decoded."""
    try:
        return load_audio(data, st.config.media_limits)
    except MediaError as error:
        raise from_media_error(error, param) from None


def attachment_from_data_uri(kind: str, uri: str | None, param: str, st: ServeState) -> tuple[str, bytes, Any]:
    """An `/api` image or audio part: (mime to store it with, its bytes, the decoded media)."""
    limits = st.config.media_limits
    if not uri or uri[:5].lower() != "data:":
        raise bad_request(f"An {kind} part needs 'data' as a data: URI.", param, "invalid_value")
    try:
        if kind == "image":
            mime, data = decode_data_uri(uri, limits.max_image_bytes)
            return (mime if mime in IMAGE_MIMES else "application/octet-stream"), data, load_image(data, limits)
        mime, data = decode_data_uri(uri, limits.max_audio_bytes)
        return (mime if mime in AUDIO_MIMES else "application/octet-stream"), data, load_audio(data, limits)
    except MediaError as error:
        raise from_media_error(error, param) from None


def _fetch_remote(url: str, max_bytes: int, param: str) -> bytes:
    """GET an http(s) URL, bounded in bytes and time (only with --allow-remote-media)."""
    import httpx

    try:
        with httpx.Client(follow_redirects=True, max_redirects=3, timeout=10.0) as client:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise bad_request(f"Could not fetch the image: the URL answered HTTP {response.status_code}.",
                                      param, "invalid_image_url")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise MediaTooLargeError(f"image is {declared} bytes, over the limit of {max_bytes} bytes")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise MediaTooLargeError(f"image is larger than the limit of {max_bytes} bytes")
                return bytes(data)
    except httpx.HTTPError as error:
        raise bad_request(f"Could not fetch the image: {error}", param, "invalid_image_url") from None
