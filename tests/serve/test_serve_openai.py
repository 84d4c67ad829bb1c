"""The OpenAI-compatible routes through FastAPI's TestClient (fake assistant)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.serve.conftest import assert_error, data_uri, parse_sse, png_bytes, speech
from tests.serve.fake_assistant import ANSWER, TRANSCRIPT, FakeAssistant

CHAT = "/v1/chat/completions"


def user(content):
    return {"role": "user", "content": content}


def test_text_completion_shape_and_real_counts(client, fake):
    r = client.post(CHAT, json={"model": "anything", "messages": [user("What is the capital of France?")],
                                "max_tokens": 50, "user": "ignored-unknown-field", "logprobs": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == fake.name
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": ANSWER, "refusal": None}
    # Counts come from the model's Done event, not from guessing.
    call = fake.calls[-1]
    assert body["usage"]["completion_tokens"] == len(ANSWER.split())
    assert body["usage"]["prompt_tokens"] == len("What is the capital of France?".split()) + 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["omniphi"] == {"transcripts": []}
    assert call["settings"].max_new_tokens == 50


def test_sampling_parameters_reach_the_model(client, fake):
    r = client.post(CHAT, json={"messages": [user("hi")], "temperature": 0, "top_p": 0.5, "seed": 7,
                                "max_completion_tokens": 3, "stop": "Paris"})
    assert r.status_code == 200, r.text
    settings = fake.calls[-1]["settings"]
    assert (settings.temperature, settings.top_p, settings.seed, settings.max_new_tokens, settings.stop) == (
        0.0, 0.5, 7, 3, ["Paris"])
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3

    r = client.post(CHAT, json={"messages": [user("hi")], "stop": ["Paris", "zzz"]})
    assert r.json()["choices"][0]["message"]["content"] == "The capital of France is "
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_roles_developer_and_system_merge_into_one_leading_system_message(client, fake):
    r = client.post(CHAT, json={"messages": [
        {"role": "system", "content": "Be brief."},
        user("Hello"),
        {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        user("Capital of France?"),
    ]})
    assert r.status_code == 200, r.text
    messages = fake.calls[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief.\n\nAnswer in English."
    assert messages[2]["content"] == [{"type": "text", "text": "Hi!"}]


def test_image_data_uri_is_decoded_to_rgb(client, fake):
    r = client.post(CHAT, json={"messages": [user([
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes((40, 30)), "image/png"), "detail": "auto"}},
        {"type": "text", "text": "What colour is this?"},
    ])]})
    assert r.status_code == 200, r.text
    parts = fake.calls[-1]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image", "text"]  # order kept
    assert parts[0]["image"].size == (40, 30) and parts[0]["image"].getpixel((0, 0)) == (200, 30, 30)


@pytest.mark.parametrize("name,fmt", [("capital.wav", "wav"), ("capital.webm", "webm")])
def test_input_audio_is_decoded_and_transcript_reported(client, fake, name, fmt):
    r = client.post(CHAT, json={"messages": [user([
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(speech(name)).decode(), "format": fmt}},
    ])], "audio_mode": "transcribe"})
    assert r.status_code == 200, r.text
    call = fake.calls[-1]
    (part,) = call["messages"][-1]["content"]
    audio = part["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < len(audio) / 16000 < 2.3  # the same sentence, whatever the container
    assert call["audio_mode"] == "transcribe"
    assert r.json()["omniphi"] == {"transcripts": [TRANSCRIPT]}


def test_default_audio_mode_comes_from_config(make_client, fake):
    client = make_client(fake, audio_mode="transcribe")
    client.post(CHAT, json={"messages": [user("hi")]})
    assert fake.calls[-1]["audio_mode"] == "transcribe"


def test_streaming_with_usage(client, fake):
    # The official client sends Accept: application/json even when streaming.
    r = client.post(CHAT, headers={"Accept": "application/json"}, json={
        "messages": [user([{"type": "text", "text": "Say it"},
                           {"type": "input_audio", "input_audio": {"data": base64.b64encode(speech()).decode(),
                                                                   "format": "wav"}}])],
        "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == fake.name for c in chunks)
    first, *middle, final, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == ANSWER
    assert all(c["choices"][0]["finish_reason"] is None and c["usage"] is None for c in middle)
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "stop"
    assert final["omniphi"] == {"transcripts": [TRANSCRIPT]}
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(middle) == len(ANSWER.split())
    assert usage["usage"]["prompt_tokens"] > 0
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]


def test_streaming_without_usage_has_no_usage_chunk(client):
    events = parse_sse(client.post(CHAT, json={"messages": [user("hi")], "stream": True,
                                               "max_tokens": 2}).text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and "usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_models_and_health(client, fake):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [fake.name]
    assert body["data"][0]["object"] == "model" and isinstance(body["data"][0]["created"], int)
    assert client.get(f"/v1/models/{fake.name}").json()["id"] == fake.name
    assert client.get("/v1/models/gpt-4").status_code == 404
    assert client.get("/health").json() == {"status": "ok", "model": fake.name, "queue": 0}


@pytest.mark.parametrize("fixture", ["capital.wav", "capital.webm", "capital.mp3"])
def test_transcriptions_json(client, fake, fixture):
    r = client.post("/v1/audio/transcriptions", files={"file": (fixture, speech(fixture), "application/octet-stream")},
                    data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": TRANSCRIPT}
    assert fake.calls[-1]["kind"] == "transcribe"


def test_transcriptions_text_and_verbose_json(client):
    files = {"file": ("capital.wav", speech(), "audio/wav")}
    r = client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1", "response_format": "text"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == TRANSCRIPT
    r = client.post("/v1/audio/transcriptions", files=files,
                    data={"model": "whisper-1", "response_format": "verbose_json"})
    body = r.json()
    assert body["text"] == TRANSCRIPT and body["language"] == "en" and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(1.83, abs=0.1)


def test_transcription_prompt_reaches_whisper_and_defaults_to_the_models_own(client, fake):
    files = {"file": ("capital.wav", speech(), "audio/wav")}
    assert client.post("/v1/audio/transcriptions", files=files, data={"prompt": "Paris, Berlin."}).status_code == 200
    assert fake.calls[-1]["prompt"] == "Paris, Berlin."
    assert client.post("/v1/audio/transcriptions", files=files).status_code == 200
    assert fake.calls[-1]["prompt"] is None  # the model's own (omniphi.asr.Transcriber.prompt)


def test_transcription_prompt_sent_as_a_file_or_too_long_is_a_400(client, fake):
    files = {"file": ("capital.wav", speech(), "audio/wav"), "prompt": ("p.txt", b"Paris", "text/plain")}
    assert "files" in assert_error(client.post("/v1/audio/transcriptions", files=files), 400)["message"]
    files = {"file": ("capital.wav", speech(), "audio/wav")}
    assert_error(client.post("/v1/audio/transcriptions", files=files, data={"prompt": "word " * 1000}), 400,
                 code="string_above_max_length", param="prompt")
    assert not [c for c in fake.calls if c["kind"] == "transcribe"]


@pytest.fixture
def image_host():
    """A tiny HTTP server on 127.0.0.1 serving /cat.png (stands in for a remote image host)."""
    import http.server
    import threading

    image = png_bytes((7, 5))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/cat.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images_only_when_allowed(make_client, image_host):
    body = {"messages": [user([{"type": "image_url", "image_url": {"url": f"{image_host}/cat.png"}}])]}
    assert_error(make_client().post(CHAT, json=body), 400, code="remote_media_disabled")
    fake = FakeAssistant()
    client = make_client(fake, allow_remote_media=True)
    assert client.post(CHAT, json=body).status_code == 200
    assert fake.calls[-1]["messages"][-1]["content"][0]["image"].size == (7, 5)
    missing = {"messages": [user([{"type": "image_url", "image_url": {"url": f"{image_host}/nope.png"}}])]}
    assert_error(client.post(CHAT, json=missing), 400, code="invalid_image_url",
                 param="messages[0].content[0].image_url.url")


def test_page_and_static_files(make_client, tmp_path, monkeypatch):
    from omniphi.serve import app as app_module

    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>omniphi</title>")
    (web / "app.js").write_text("console.log('hi');")
    monkeypatch.setattr(app_module, "WEB_DIR", web)
    client = make_client(api_key="secret")  # the page itself needs no key
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "omniphi" in page.text and page.headers["cache-control"] == "no-cache"
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache"  # not fingerprinted: always revalidate
    again = client.get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/missing.js").json()["error"]["code"] == "unknown_url"
