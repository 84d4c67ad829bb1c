"""The OpenAI-compatible API: `/v1/chat/completions`, `/v1/models`, `/v1/audio/transcriptions`, `/health`.

Stateless; what it accepts and answers is in docs/serve-api.md. Bodies are admitted by
`serve/admission.py` (JSON rules, media limits and decoding, off the event loop) and validated by
pydantic models (unknown fields ignored, wrong types → 400 with `param`); the model runs in the engine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from typing import Any, Literal, Optional, Union

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from omniphi.chat import Done, GenerationSettings, Token, Transcript
from omniphi.serve.admission import (
    MediaCounter,
    audio_from_base64,
    audio_upload,
    image_from_url,
    parse_json_body,
)
from omniphi.serve.engine import ChatRequest, Job, TranscriptionRequest
from omniphi.serve.errors import bad_request, from_validation_errors, not_found, status_and_body
from omniphi.serve.state import ServeState, state
from omniphi.serve.streaming import SSE_HEADERS, sse

router = APIRouter()


# --------------------------------------------------------------------------- request models


class _Strict(BaseModel):
    # strict: "0.5" is not a number and 1 is not a boolean (OpenAI refuses those too);
    # extra="ignore": OpenAI clients send fields we do not use (user, logprobs, ...).
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: Optional[bool] = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    # Parts are checked by hand (see _parse_parts) for precise `param`s and messages.
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None


class ChatCompletionRequest(_Strict):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None  # 64-bit, like every integer (omniphi.serve.admission)
    n: Optional[int] = None
    audio_mode: Optional[Literal["native", "transcribe"]] = None


class _ImageURL(_Strict):
    url: str
    detail: Optional[str] = None


class _InputAudio(_Strict):
    data: str
    format: Optional[str] = None


_PART_TYPES = "'text', 'image_url' and 'input_audio'"


# --------------------------------------------------------------------------- conversion


def _convert_messages(body: ChatCompletionRequest, st: ServeState) -> list[dict[str, Any]]:
    """OpenAI messages → omniphi.chat messages with decoded media (runs in a worker thread).

    System/developer messages are merged into one leading system message: the chat templates only
    take a system prompt first."""
    if len(body.messages) > st.config.max_messages:
        raise bad_request(f"Too many messages: at most {st.config.max_messages} per request (the model's "
                          "context holds far fewer).", "messages", "too_many_messages")
    media = MediaCounter(st.config)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None:
            if role != "assistant":
                raise bad_request(f"Missing content of messages[{i}].", f"messages[{i}].content", "missing_required_parameter")
            content = ""
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        else:
            for j, raw in enumerate(content):
                param = f"messages[{i}].content[{j}]"
                kind = raw.get("type")
                if kind == "text":
                    text = raw.get("text")
                    if not isinstance(text, str):
                        raise bad_request(f"Invalid value for '{param}.text': expected a string.", f"{param}.text", "invalid_type")
                    parts.append({"type": "text", "text": text})
                elif kind == "refusal" and role == "assistant":
                    continue
                elif kind in ("image_url", "input_audio"):
                    if role != "user":
                        raise bad_request(f"'{kind}' parts are only allowed in user messages.", f"{param}.type", "invalid_value")
                    media.count("image" if kind == "image_url" else "audio", param)
                    if kind == "image_url":
                        spec = raw.get("image_url")
                        url = spec if isinstance(spec, str) else _validated(_ImageURL, spec, f"{param}.image_url").url
                        parts.append({"type": "image", "image": image_from_url(url, f"{param}.image_url.url", st)})
                    else:
                        spec = _validated(_InputAudio, raw.get("input_audio"), f"{param}.input_audio")
                        parts.append({"type": "audio", "audio": audio_from_base64(spec.data, f"{param}.input_audio.data", st)})
                else:
                    raise bad_request(f"Invalid value: {kind!r}. Supported values are: {_PART_TYPES}.",
                                      f"{param}.type", "invalid_value")
        if role == "system":
            system.append("".join(p["text"] for p in parts))
        else:
            turns.append({"role": role, "content": parts})
    if not any(m["role"] == "user" for m in turns):
        raise bad_request("The messages must contain at least one user message.", "messages", "invalid_value")
    prefix = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return prefix + turns


def _validated(model: type[BaseModel], value: Any, param: str):
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise from_validation_errors(error.errors(), prefix=tuple(_split_param(param))) from None


def _split_param(param: str) -> list:
    """"messages[0].content[1].image_url" → ["messages", 0, "content", 1, "image_url"]."""
    out: list = []
    for piece in param.split("."):
        name, *indexes = piece.split("[")
        if name:
            out.append(name)
        out.extend(int(i.rstrip("]")) for i in indexes)
    return out


def _settings(body: ChatCompletionRequest, st: ServeState) -> GenerationSettings:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    defaults = st.generation
    settings = replace(
        defaults,
        max_new_tokens=body.max_completion_tokens or body.max_tokens or defaults.max_new_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        stop=stop,
        seed=body.seed,
    )
    try:
        return settings.validate()
    except ValueError as error:
        param = "stop" if "stop" in str(error) else None
        raise bad_request(str(error), param, "invalid_value") from None


# --------------------------------------------------------------------------- routes


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    st = state(request)
    ok = st.engine.running
    body = {"status": "ok" if ok else "unavailable", "model": st.engine.model_name, "queue": st.engine.waiting}
    return JSONResponse(body, status_code=200 if ok else 503)


def _model_object(st: ServeState) -> dict[str, Any]:
    return {"id": st.engine.model_name, "object": "model", "created": int(st.started_at), "owned_by": "omniphi"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(state(request))]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    st = state(request)
    if model_id != st.engine.model_name:
        raise not_found(f"The model '{model_id}' does not exist; this server serves '{st.engine.model_name}'.",
                        "model", "model_not_found")
    return _model_object(st)


async def wait_for_job(job: Job, request: Request):
    """A non-streamed answer: wait for the job, cancelling it if the client disconnects meanwhile
    (the body has been read, so the next ASGI message is the disconnect)."""

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await job.wait()
    finally:
        watcher.cancel()
        job.cancel()  # no-op when finished; stops the model if we are being torn down


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    st = state(request)
    body = await parse_json_body(request, ChatCompletionRequest)
    if body.n is not None and body.n != 1:
        raise bad_request("Only n=1 is supported.", "n", "invalid_value")
    settings = _settings(body, st)
    audio_mode = body.audio_mode or st.config.audio_mode
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true.", "stream_options", "invalid_value")
    messages = await anyio.to_thread.run_sync(_convert_messages, body, st)
    job = st.engine.submit(ChatRequest(messages, settings, audio_mode))  # QueueFull → 429 before any byte
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = st.engine.model_name

    if not body.stream:
        result = await wait_for_job(job, request)
        done = result.done
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                         "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": _usage(done),
            "omniphi": {"transcripts": result.transcripts},
        })

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra) -> str:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
        if include_usage:
            data["usage"] = None
        return sse(data)

    async def events():
        transcripts: list[str] = []
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in job:
                if isinstance(event, Token):
                    yield chunk({"content": event.text})
                elif isinstance(event, Transcript):
                    transcripts.append(event.text)
                elif isinstance(event, Done):
                    yield chunk({}, event.finish_reason, omniphi={"transcripts": transcripts})
                    if include_usage:
                        yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": [], "usage": _usage(event)})
            yield "data: [DONE]\n\n"
        except Exception as error:  # noqa: BLE001 — headers are sent: report in-band (the client raises APIError)
            _status, payload, _headers = status_and_body(error)
            yield sse(payload)
        finally:
            job.cancel()  # the client went away (or we are done): stop generating

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


_TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
# Whisper reads only a prompt's last 223 tokens (omniphi.asr.MAX_PROMPT_TOKENS); a longer text is
# refused rather than tokenised whole.
MAX_TRANSCRIPTION_PROMPT_CHARS = 4000


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    st = state(request)
    limits = st.config.media_limits
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise bad_request("Expected a multipart/form-data body with a 'file' field.", "file", "invalid_request")
    form = await request.form(max_files=1, max_fields=32)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        response_format = form.get("response_format") or "json"
        if response_format not in _TRANSCRIPTION_FORMATS:
            raise bad_request(f"Invalid value for 'response_format': {response_format!r}. Supported values are: "
                              "'json', 'text' and 'verbose_json'.", "response_format", "invalid_value")
        if str(form.get("stream", "false")).lower() == "true":
            raise bad_request("Streaming transcriptions are not supported.", "stream", "invalid_value")
        # None: the model's own (omniphi.asr.Transcriber.prompt). Text: a second file is refused above.
        prompt = form.get("prompt")
        if prompt is not None and len(prompt) > MAX_TRANSCRIPTION_PROMPT_CHARS:
            raise bad_request(f"'prompt' is too long: {len(prompt)} characters, at most "
                              f"{MAX_TRANSCRIPTION_PROMPT_CHARS}.", "prompt", "string_above_max_length")
        data = await upload.read(limits.max_audio_bytes + 1)
    finally:
        await form.close()
    audio = await anyio.to_thread.run_sync(audio_upload, data, "file", st)
    result = await wait_for_job(st.engine.submit(TranscriptionRequest(audio, prompt)), request)
    text = result.transcripts[0] if result.transcripts else ""
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        # No segment timestamps: the transcriber gives the text only, and made-up segments would mislead.
        return JSONResponse({"task": "transcribe", "language": "en", "duration": round(len(audio) / 16000, 3),
                             "text": text})
    return JSONResponse({"text": text})
