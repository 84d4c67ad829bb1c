"""Every error class: status, OpenAI body shape, `param`/`code`, and the server still answering after.

Choice documented in docs/serve-api.md: wrong types in a JSON body are 400 `invalid_request_error`
(as OpenAI answers them), never FastAPI's 422.
"""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from pydantic import BaseModel

from omniphi.chat import GenerationSettings
from omniphi.serve.engine import ChatRequest, Engine
from tests.serve.conftest import API_KEY, SMALL_LIMITS, assert_error, data_uri, png_bytes, speech
from tests.serve.fake_assistant import FakeAssistant

CHAT = "/v1/chat/completions"


def chat_body(*parts, **extra):
    return {"model": "m", "messages": [{"role": "user", "content": list(parts) or "hi"}], **extra}


def image_part(data: bytes, mime="image/png"):
    return {"type": "image_url", "image_url": {"url": data_uri(data, mime)}}


def audio_part(data: bytes, fmt="wav"):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def bomb_png(width=50_000, height=50_000) -> bytes:
    """A valid 1×1 PNG whose header claims width×height (the decoder would allocate it all)."""
    raw = png_bytes((1, 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[8 + 25:]


def still_answers(client):
    r = client.post(CHAT, json=chat_body())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert client.get("/health").status_code == 200


# (description, request kwargs, status, code, param) — all against a default-config client.
BAD_REQUESTS = [
    ("malformed JSON", dict(content=b'{"messages": [', headers={"content-type": "application/json"}),
     400, "invalid_json", None),
    ("JSON that is not an object", dict(json=[1, 2]), 400, "invalid_json", None),
    ("n=2", dict(json=chat_body(n=2)), 400, "invalid_value", "n"),
    ("missing messages", dict(json={"model": "m"}), 400, "missing_required_parameter", "messages"),
    ("empty messages", dict(json={"messages": []}), 400, "invalid_value", "messages"),
    ("temperature as a string", dict(json=chat_body(temperature="0.5")), 400, "invalid_type", "temperature"),
    ("temperature out of range", dict(json=chat_body(temperature=3)), 400, "invalid_value", "temperature"),
    ("stream not a boolean", dict(json=chat_body(stream=1)), 400, "invalid_type", "stream"),
    ("max_tokens zero", dict(json=chat_body(max_tokens=0)), 400, "invalid_value", "max_tokens"),
    ("too many stop strings", dict(json=chat_body(stop=list("abcde"))), 400, "invalid_value", "stop"),
    ("unknown role", dict(json={"messages": [{"role": "tool", "content": "x"}]}), 400, "invalid_value",
     "messages[0].role"),
    ("no user message", dict(json={"messages": [{"role": "system", "content": "x"}]}), 400, "invalid_value",
     "messages"),
    ("unknown part type", dict(json=chat_body({"type": "video", "video": {}})), 400, "invalid_value",
     "messages[0].content[0].type"),
    ("text part without text", dict(json=chat_body({"type": "text", "text": 3})), 400, "invalid_type",
     "messages[0].content[0].text"),
    ("image_url without url", dict(json=chat_body({"type": "image_url", "image_url": {}})), 400,
     "missing_required_parameter", "messages[0].content[0].image_url.url"),
    ("remote image URL", dict(json=chat_body({"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}})),
     400, "remote_media_disabled", "messages[0].content[0].image_url.url"),
    ("file: image URL", dict(json=chat_body({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}})),
     400, "invalid_image_url", "messages[0].content[0].image_url.url"),
    ("image in a system message", dict(json={"messages": [
        {"role": "system", "content": [image_part(png_bytes())]}, {"role": "user", "content": "x"}]}),
     400, "invalid_value", "messages[0].content[0].type"),
    ("too many images", dict(json=chat_body(*[image_part(png_bytes())] * 9)), 400, "too_many_images",
     "messages[0].content[8]"),
    ("too many audio clips", dict(json=chat_body(*[audio_part(speech())] * 5)), 400, "too_many_audio_clips",
     "messages[0].content[4]"),
    ("corrupt image", dict(json=chat_body(image_part(png_bytes()[:60]))), 400, "invalid_media",
     "messages[0].content[0].image_url.url"),
    ("not an image", dict(json=chat_body(image_part(b"%PDF-1.4 hello", "image/png"))), 400,
     "unsupported_media_type", "messages[0].content[0].image_url.url"),
    ("bad base64 in a data URI", dict(json=chat_body({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}})),
     400, "invalid_media", "messages[0].content[0].image_url.url"),
    ("decompression bomb", dict(json=chat_body(image_part(bomb_png()))), 413, "media_too_large",
     "messages[0].content[0].image_url.url"),
    ("audio that is not audio", dict(json=chat_body(audio_part(png_bytes()))), 400, "unsupported_media_type",
     "messages[0].content[0].input_audio.data"),
    ("corrupt audio", dict(json=chat_body(audio_part(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 4))), 400,
     "invalid_media", "messages[0].content[0].input_audio.data"),
    ("audio not base64", dict(json=chat_body({"type": "input_audio", "input_audio": {"data": "***", "format": "wav"}})),
     400, "invalid_base64", "messages[0].content[0].input_audio.data"),
]


@pytest.mark.parametrize("what,kwargs,status,code,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_chat_requests(client, fake, what, kwargs, status, code, param):
    calls = len(fake.calls)
    r = client.post(CHAT, **kwargs)
    error = assert_error(r, status, code=code, param=param)
    assert error["type"] == "invalid_request_error"
    assert len(fake.calls) == calls  # refused before the model was asked
    still_answers(client)


def test_over_long_audio_is_413(make_client):
    client = make_client(media_limits=SMALL_LIMITS)  # 1 s; capital.wav is ~1.8 s
    assert_error(client.post(CHAT, json=chat_body(audio_part(speech("capital.webm"), "webm"))), 413,
                 code="media_too_large", param="messages[0].content[0].input_audio.data")
    assert_error(client.post("/v1/audio/transcriptions", files={"file": ("a.wav", speech(), "audio/wav")}), 413,
                 code="media_too_large", param="file")
    still_answers(client)


def test_huge_body_is_413_by_content_length_and_by_counting(make_client):
    client = make_client(max_request_bytes=4096)
    body = chat_body({"type": "text", "text": "x" * 10_000})
    assert_error(client.post(CHAT, json=body), 413, code="request_too_large")

    def chunked():  # no Content-Length: the limit must count the bytes as they arrive
        for _ in range(10):
            yield b" " * 1000
    r = client.post(CHAT, content=chunked(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, code="request_too_large")
    assert_error(client.post("/api/conversations", content=chunked(), headers={"content-type": "application/json"}),
                 413, code="request_too_large")
    still_answers(client)


def test_auth(make_client):
    client = make_client(api_key=API_KEY)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic x"}):
        for method, path in (("post", CHAT), ("get", "/v1/models"), ("get", "/api/conversations"),
                             ("get", "/v1/unknown-route"), ("get", "/api/attachments/x")):
            r = getattr(client, method)(path, headers=headers)
            assert_error(r, 401, code="invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {API_KEY}"}
    assert client.get("/v1/models", headers=good).status_code == 200
    assert client.post(CHAT, json=chat_body(), headers=good).status_code == 200
    assert client.get("/health").status_code == 200  # no key needed
    assert client.get("/").status_code in (200, 404)  # the page (if installed) needs no key


def test_unknown_routes_and_methods(client):
    assert_error(client.get("/v1/nope"), 404, code="unknown_url")
    assert_error(client.get("/api/conversations/does-not-exist"), 404, code="not_found")
    assert_error(client.delete("/api/conversations/does-not-exist"), 404)
    assert_error(client.get("/api/attachments/../../etc/passwd"), 404)
    assert_error(client.get("/static/../app.py"), 404)
    assert_error(client.get(CHAT), 405, code="method_not_allowed")
    still_answers(client)


def test_transcription_errors(client):
    url = "/v1/audio/transcriptions"
    assert_error(client.post(url, data={"model": "whisper-1"}, files={"other": ("x", b"x")}), 400,
                 code="missing_required_parameter", param="file")
    assert_error(client.post(url, json={"file": "x"}), 400, param="file")
    assert_error(client.post(url, files={"file": ("a.wav", speech())}, data={"response_format": "srt"}), 400,
                 code="invalid_value", param="response_format")
    assert_error(client.post(url, files={"file": ("a.png", png_bytes())}), 400, code="unsupported_media_type",
                 param="file")
    assert_error(client.post(url, files={"file": ("a.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)}), 400,
                 code="invalid_media", param="file")
    still_answers(client)


def test_model_failure_is_500_without_traceback(make_client, caplog):
    client = make_client(FakeAssistant(fail_after=2))
    error = assert_error(client.post(CHAT, json=chat_body()), 500, code="internal_error")
    assert error["type"] == "server_error" and "fake model failure" not in error["message"]
    assert "fake model failure" in caplog.text  # logged for the operator
    # Streamed: the tokens so far, then the error in-band (the openai client raises APIError on it).
    from tests.serve.conftest import parse_sse

    events = parse_sse(client.post(CHAT, json=chat_body(stream=True)).text)
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["The", " capital"]
    assert events[-1]["error"]["code"] == "internal_error" and "[DONE]" not in events
    assert client.get("/health").status_code == 200


def test_queue_full_is_429_with_retry_after(make_client):
    fake = FakeAssistant(token_delay=0.2)  # busy for 2.6 s unless cancelled
    engine = Engine(fake, max_queue=1)
    client = make_client(engine)
    long = ChatRequest([{"role": "user", "content": "x"}], GenerationSettings(max_new_tokens=100))
    running, waiting = engine.submit(long), engine.submit(long)  # one generating, one waiting
    try:
        r = client.post(CHAT, json=chat_body())
        assert_error(r, 429, code="queue_full")
        assert int(r.headers["retry-after"]) >= 1
        assert client.get("/health").json()["queue"] == 1
        r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", speech())})
        assert_error(r, 429, code="queue_full")
    finally:
        running.cancel()
        waiting.cancel()
    fake.token_delay = 0
    still_answers(client)
    engine.stop()


def test_stopped_engine_is_503(make_client):
    engine = Engine(FakeAssistant())
    client = make_client(engine)
    still_answers(client)
    engine.stop()
    error = assert_error(client.post(CHAT, json=chat_body()), 503, code="engine_unavailable")
    assert error["type"] == "server_error"
    assert client.get("/health").status_code == 503
    assert client.get("/health").json()["status"] == "unavailable"
    conv = client.post("/api/conversations", json={}).json()
    r = client.post(f"/api/conversations/{conv['id']}/chat", json={"content": [{"type": "text", "text": "hi"}]})
    assert_error(r, 503)
    assert client.get(f"/api/conversations/{conv['id']}").json()["messages"] == []  # nothing half-stored


class ProbeBody(BaseModel):
    count: int


def test_fastapi_own_validation_errors_are_openai_400s(make_client):
    """Routes that use FastAPI's parameter/body validation (a plugin might add one) get the same
    treatment: 400 with `param`, malformed JSON 400 `invalid_json`, never a 422 `detail` body."""
    client = make_client()

    @client.app.get("/v1/probe")
    def probe(n: int):
        return {"n": n}

    @client.app.post("/v1/probe")
    def probe_body(body: ProbeBody):
        return body

    assert client.get("/v1/probe", params={"n": 3}).json() == {"n": 3}
    assert_error(client.get("/v1/probe", params={"n": "three"}), 400, code="invalid_value", param="n")
    assert_error(client.get("/v1/probe"), 400, code="missing_required_parameter", param="n")
    assert_error(client.post("/v1/probe", json={"count": "many"}), 400, param="count")
    assert_error(client.post("/v1/probe", content=b"{", headers={"content-type": "application/json"}), 400,
                 code="invalid_json")
