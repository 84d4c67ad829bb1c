"""End to end with the real Assistant on the random `tiny` preset: the API answers exactly what the
model answers (greedy decoding), with the model's own token counts. Runs in the normal suite
(tiny loads in seconds, answers in milliseconds)."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from omniphi.chat import GenerationSettings
from omniphi.media import load_audio, load_image
from omniphi.serve.app import ServeConfig, create_app
from tests.serve.conftest import assert_error, data_uri, parse_sse, png_bytes, speech

IMAGE = png_bytes((48, 40), (20, 120, 220))
AUDIO = speech("capital.wav")


@pytest.fixture(scope="module")
def assistant():
    from omniphi.runtime.assistant import Assistant

    return Assistant.load("tiny")


@pytest.fixture(scope="module")
def client(assistant, tmp_path_factory):
    app = create_app(assistant, ServeConfig(data_dir=tmp_path_factory.mktemp("real-model"), temperature=0.0,
                                            system_prompt=""))
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as client:
        yield client


def openai_messages():
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(IMAGE, "image/png")}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(AUDIO).decode(), "format": "wav"}},
        {"type": "text", "text": "What do you see and hear?"}]}]


def direct_messages():
    return [{"role": "user", "content": [
        {"type": "image", "image": load_image(IMAGE)}, {"type": "audio", "audio": load_audio(AUDIO)},
        {"type": "text", "text": "What do you see and hear?"}]}]


def test_chat_matches_the_model(client, assistant):
    expected = assistant.complete(direct_messages(), GenerationSettings(max_new_tokens=8))
    r = client.post("/v1/chat/completions", json={"model": assistant.name, "messages": openai_messages(),
                                                  "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == assistant.name
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert body["usage"]["completion_tokens"] == expected.completion_tokens


def test_streaming_matches_non_streaming(client):
    request = {"messages": openai_messages(), "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=request).json()
    events = parse_sse(client.post("/v1/chat/completions", json={
        **request, "stream": True, "stream_options": {"include_usage": True}}).text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-2]["usage"] == whole["usage"]


def test_conversation_turns(client):
    conv = client.post("/api/conversations", json={}).json()
    for question in ("Hello there", "And again"):
        r = client.post(f"/api/conversations/{conv['id']}/chat", json={
            "content": [{"type": "text", "text": question}, {"type": "image", "data": data_uri(IMAGE, "image/png")}],
            "settings": {"max_tokens": 6, "temperature": 0}})
        events = parse_sse(r.text)
        assert events[0]["type"] == "user_message" and events[-1]["type"] == "done", events[-1]
        streamed = "".join(e["text"] for e in events if e["type"] == "token")
        answer = events[-1]["message"]
        assert answer["content"][0]["text"] == streamed
        assert answer["usage"]["completion_tokens"] <= 6 and answer["usage"]["prompt_tokens"] > 0
    messages = client.get(f"/api/conversations/{conv['id']}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_transcription(client, assistant):
    r = client.post("/v1/audio/transcriptions", files={"file": ("capital.webm", speech("capital.webm"))})
    if assistant.transcriber is None:  # the random tiny preset has no speech recogniser
        assert_error(r, 400, code="transcription_unavailable")
    else:
        assert r.status_code == 200 and isinstance(r.json()["text"], str)
    assert client.get("/health").json()["status"] == "ok"
