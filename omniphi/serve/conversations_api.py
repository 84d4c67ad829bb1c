"""The conversation API under `/api` (what the web page uses); contract in docs/serve-api.md.

A chat turn: validate and decode the new media → hold an engine slot (429 before anything is
stored) → store the question durably → stream SSE events. The answer is stored by the engine's
thread when generation ends, whatever happened to the client: a Stop (disconnect) cancels the
generation and the partial answer is kept with `finish_reason: "cancelled"`.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Literal, Optional

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from omniphi.chat import Done, Token, Transcript
from omniphi.media import load_audio, load_image
from omniphi.serve.admission import MediaCounter, attachment_from_data_uri, parse_json_body
from omniphi.serve.engine import ChatRequest, JobResult
from omniphi.serve.errors import ApiError, bad_request, not_found, status_and_body
from omniphi.serve.state import ServeState, state
from omniphi.serve.store import Store, StoreError, new_id
from omniphi.serve.streaming import SSE_HEADERS, sse

router = APIRouter(prefix="/api")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class NewConversation(_Strict):
    title: Optional[str] = Field(default=None, max_length=200)


class Rename(_Strict):
    title: str = Field(min_length=1, max_length=200)


class ChatPart(_Strict):
    type: Literal["text", "image", "audio"]
    text: Optional[str] = None
    data: Optional[str] = None


class ChatSettings(_Strict):
    system_prompt: Optional[str] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    audio_mode: Optional[Literal["native", "transcribe"]] = None


class ChatBody(_Strict):
    content: Optional[list[ChatPart]] = None
    regenerate: bool = False
    edit_message_id: Optional[str] = None
    settings: Optional[ChatSettings] = None


async def _run(fn, *args, **kwargs):
    """Blocking work (SQLite with fsync, media decoding) off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _store_error(error: StoreError) -> ApiError:
    return ApiError(error.status, str(error), param=error.param, code="not_found" if error.status == 404 else "invalid_value")


def _conversation_or_404(store: Store, conv_id: str) -> dict[str, Any]:
    conv = store.get_conversation(conv_id)
    if conv is None:
        raise not_found(f"No conversation with id '{conv_id}'.", "id")
    return conv


# --------------------------------------------------------------------------- CRUD


@router.get("/conversations")
async def list_conversations(request: Request) -> dict[str, Any]:
    return {"data": await _run(state(request).store.list_conversations)}


@router.post("/conversations", status_code=201)
async def create_conversation(request: Request) -> dict[str, Any]:
    body = await parse_json_body(request, NewConversation, empty_ok=True)
    return await _run(state(request).store.create_conversation, body.title)


@router.get("/conversations/{conv_id}")
async def get_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    store = state(request).store
    conv = await _run(_conversation_or_404, store, conv_id)
    return {**conv, "messages": await _run(store.messages, conv_id)}


@router.patch("/conversations/{conv_id}")
async def rename_conversation(conv_id: str, request: Request) -> dict[str, Any]:
    body = await parse_json_body(request, Rename)
    if not body.title.strip():
        raise bad_request("The title must not be empty.", "title", "invalid_value")
    conv = await _run(state(request).store.rename_conversation, conv_id, body.title)
    if conv is None:
        raise not_found(f"No conversation with id '{conv_id}'.", "id")
    return conv


@router.delete("/conversations/{conv_id}", status_code=204)
async def delete_conversation(conv_id: str, request: Request) -> Response:
    if not await _run(state(request).store.delete_conversation, conv_id):
        raise not_found(f"No conversation with id '{conv_id}'.", "id")
    return Response(status_code=204)


@router.get("/attachments/{attachment_id}")
async def get_attachment(attachment_id: str, request: Request) -> Response:
    found = await _run(state(request).store.attachment, attachment_id)
    if found is None:
        raise not_found(f"No attachment with id '{attachment_id}'.", "id")
    path, mime = found
    return FileResponse(path, media_type=mime, headers={
        # Ids are never reused and files never change: cache for good (private: behind the key).
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    })


@router.get("/settings/defaults")
async def settings_defaults(request: Request) -> dict[str, Any]:
    st = state(request)
    config = st.config
    return {"system_prompt": config.system_prompt, "temperature": st.generation.temperature,
            "max_tokens": st.generation.max_new_tokens, "audio_mode": config.audio_mode, "model": st.engine.model_name}


_CARD_MEDIA_URL = "/api/model/suggestions/{index}/{kind}"


@router.get("/model")
async def model_card(request: Request) -> dict[str, Any]:
    """The loaded model's card (omniphi/model_card.py) for the page's empty chat: what it can do,
    what it cannot, suggestions that work for it. A model without a card has only its name."""
    st = state(request)
    card = st.engine.assistant.card
    if card is None:
        return {"name": st.engine.model_name, "summary": "", "limits": "", "suggestions": []}
    return card.public(_CARD_MEDIA_URL)


@router.get("/model/suggestions/{index}/{kind}")
async def model_card_media(index: int, kind: str, request: Request) -> Response:
    """A sample picture or spoken question of a suggestion card (files of the model directory that
    its card names; nothing else of the directory is reachable)."""
    card = state(request).engine.assistant.card
    if card is None or not 0 <= index < len(card.suggestions) or kind not in card.suggestions[index].media:
        raise not_found(f"The model card has no {kind!r} for suggestion {index}.", "index")
    return FileResponse(card.suggestions[index].media[kind], headers={
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'"})


# --------------------------------------------------------------------------- chat


def _prepare_content(parts: list[ChatPart], st: ServeState):
    """Validate and decode the new question's parts (worker thread). Returns the stored-shape
    parts, the files to write (id, bytes, mime) and the decoded media by attachment id."""
    media = MediaCounter(st.config)
    stored: list[dict[str, Any]] = []
    files: list[tuple[str, bytes, str]] = []
    decoded: dict[str, Any] = {}
    for i, part in enumerate(parts):
        param = f"content[{i}]"
        if part.type == "text":
            if part.text is None:
                raise bad_request("A text part needs 'text'.", f"{param}.text", "missing_required_parameter")
            stored.append({"type": "text", "text": part.text})
            continue
        media.count(part.type, param, per="message")
        mime, data, decoded_media = attachment_from_data_uri(part.type, part.data, f"{param}.data", st)
        att_id = new_id()
        files.append((att_id, data, mime))
        decoded[att_id] = decoded_media
        entry = {"type": part.type, "attachment_id": att_id, "mime": mime}
        if part.type == "audio":
            entry["transcript"] = None
        stored.append(entry)
    if not any(p["type"] != "text" or p["text"].strip() for p in stored):
        raise bad_request("The message is empty.", "content", "invalid_value")
    return stored, files, decoded


def _model_conversation(messages: list[dict[str, Any]], system_prompt: str, decoded: dict[str, Any],
                        st: ServeState) -> list[dict[str, Any]]:
    """Stored messages → what the Assistant reads (worker thread): the newest `max_messages` of them,
    so that a long conversation's turn costs what the context can hold, not what was ever said.
    Earlier turns' media is read back from disk and decoded again; an engine-level embedding cache
    can make that free later."""
    limits = st.config.media_limits
    out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for message in messages[-st.config.max_messages:]:
        if message["role"] == "assistant":
            text = "".join(p.get("text", "") for p in message["content"] if p["type"] == "text")
            if text:  # an empty answer (failed or stopped at once) tells the model nothing
                out.append({"role": "assistant", "content": text})
            continue
        parts = []
        for part in message["content"]:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
                continue
            att_id = part["attachment_id"]
            media = decoded.get(att_id)
            if media is None:
                data = st.store.attachment_bytes(att_id)
                media = load_image(data, limits) if part["type"] == "image" else load_audio(data, limits)
            parts.append({"type": part["type"], part["type"]: media})
        out.append({"role": "user", "content": parts})
    return out


def _store_answer(store: Store, conv_id: str, user_id: str, result: JobResult):
    """Engine thread, when generation ends (also after a disconnect): the durable answer."""
    done = result.done
    usage = None
    if done is not None:
        seconds = round(done.seconds, 3)
        usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "seconds": seconds,
                 "tokens_per_second": round(done.completion_tokens / done.seconds, 2) if done.seconds > 0 else None}
    return store.finish_turn(conv_id, user_id, text=result.text, transcripts=result.transcripts,
                             finish_reason=result.finish_reason, usage=usage)


@router.post("/conversations/{conv_id}/chat")
async def chat(conv_id: str, request: Request) -> Response:
    st = state(request)
    config = st.config
    body = await parse_json_body(request, ChatBody)
    if body.regenerate and body.edit_message_id is not None:
        raise bad_request("Use either 'regenerate' or 'edit_message_id', not both.", "regenerate", "invalid_value")
    if body.regenerate and body.content:
        raise bad_request("Omit 'content' when regenerating.", "content", "invalid_value")
    if not body.regenerate and not body.content:
        raise bad_request("Missing required parameter: 'content'.", "content", "missing_required_parameter")
    chosen = body.settings or ChatSettings()
    settings = replace(
        st.generation,
        max_new_tokens=chosen.max_tokens or st.generation.max_new_tokens,
        temperature=st.generation.temperature if chosen.temperature is None else chosen.temperature,
    ).validate()
    system_prompt = config.system_prompt if chosen.system_prompt is None else chosen.system_prompt
    audio_mode = chosen.audio_mode or config.audio_mode

    await _run(_conversation_or_404, st.store, conv_id)  # before decoding megabytes for nothing
    stored, files, decoded = ([], [], {}) if body.regenerate else await _run(_prepare_content, body.content, st)

    with st.engine.reserve() as slot:  # QueueFull → 429 while nothing is stored yet
        try:
            user_message, messages = await _run(st.store.begin_turn, conv_id, content=stored or None, files=files,
                                                regenerate=body.regenerate, edit_message_id=body.edit_message_id)
        except StoreError as error:
            raise _store_error(error) from None
        conversation = await _run(_model_conversation, messages, system_prompt, decoded, st)
        job = slot.submit(ChatRequest(conversation, settings, audio_mode),
                          on_finish=functools.partial(_store_answer, st.store, conv_id, user_message["id"]))

    clips = [p["attachment_id"] for p in user_message["content"] if p["type"] == "audio"]

    async def events():
        try:
            yield sse({"type": "user_message", "message": user_message})
            async for event in job:
                if isinstance(event, Token):
                    yield sse({"type": "token", "text": event.text})
                elif isinstance(event, Transcript):
                    if event.index < len(clips):
                        yield sse({"type": "transcript", "attachment_id": clips[event.index], "text": event.text})
                elif isinstance(event, Done):
                    message = job.finish_value
                    if message is None:
                        yield sse({"type": "error", "error": {
                            "message": "The conversation changed while answering (deleted or edited elsewhere); "
                                       "the answer was not stored.", "type": "invalid_request_error", "code": "conflict"}})
                    else:
                        yield sse({"type": "done", "message": message})
        except Exception as error:  # noqa: BLE001 — headers are sent: report in-band
            _status, payload, _headers = status_and_body(error)
            err = payload["error"]
            yield sse({"type": "error", "error": {"message": err["message"], "type": err["type"], "code": err["code"]}})
        finally:
            job.cancel()  # Stop / disconnect: the engine stores the partial answer as "cancelled"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
