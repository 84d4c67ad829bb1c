"""`omniphi serve --engine vllm`: the page, store and APIs here, the answers from an OpenAI-compatible
model server (vLLM in production; here a scripted stand-in that records what it is sent).

The real vLLM behind it is tested in tests_vllm/ (`make test-vllm`); these pin what omniphi's side
must get right whatever server answers: media reach it losslessly and in place, transcribe mode
sends Whisper's transcript as text, requests run concurrently, Stop closes the remote call, and the
server's refusals and failures become OpenAI-shaped 4xx/5xx answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from omniphi.chat import Done, GenerationSettings, Token, Transcript
from omniphi.runtime.loading import describe
from omniphi.runtime.remote import RemoteAssistant, RemoteConnectError
from tests.serve.conftest import LiveServer, assert_error, data_uri, parse_sse, png_bytes, wait_until

MODEL_ID = "scripted-model"


class ScriptedModelServer:
    """A minimal OpenAI chat completions server: answers "echo: <the last user text>" a word per
    chunk (with a delay), refuses a prompt containing REFUSE with a 400, and records every request,
    how many streams were open at once, and how many ended because the client went away."""

    def __init__(self, word_delay: float = 0.0, words: int = 0):
        self.requests: list[dict] = []
        self.word_delay = word_delay
        self.extra_words = words
        self.open_streams = 0
        self.most_open = 0
        self.client_gone = 0
        self.app = FastAPI()
        self.app.get("/v1/models")(self.models)
        self.app.post("/v1/chat/completions")(self.chat)
        self.server: LiveServer | None = None

    def start(self) -> "ScriptedModelServer":
        self.server = LiveServer(self.app)
        return self

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1"

    async def models(self):
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "test"}]}

    async def chat(self, request: Request):
        body = await request.json()
        self.requests.append(body)
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else " ".join(p["text"] for p in last if p["type"] == "text")
        if "REFUSE" in text:
            return JSONResponse({"error": {"message": "This prompt is refused.", "type": "BadRequestError",
                                           "param": None, "code": 400}}, status_code=400)
        words = ["echo:", *text.split(), *(["more"] * self.extra_words)][: body["max_tokens"]]

        async def chunks():
            self.open_streams += 1
            self.most_open = max(self.most_open, self.open_streams)
            try:
                for i, word in enumerate(words):
                    await asyncio.sleep(self.word_delay)
                    delta = {"role": "assistant", "content": ("" if i == 0 else " ") + word}
                    yield _sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                finish = "length" if len(words) == body["max_tokens"] else "stop"
                yield _sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
                            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                yield _sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
                            "choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": len(words),
                                                     "total_tokens": 17 + len(words)}})
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.client_gone += 1
                raise
            finally:
                self.open_streams -= 1

        return StreamingResponse(chunks(), media_type="text/event-stream")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@pytest.fixture
def scripted():
    servers = []

    def start(**options) -> ScriptedModelServer:
        server = ScriptedModelServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.server.stop()


class FakeWhisper:
    def __init__(self, text: str = "what colour is the circle"):
        self.text = text
        self.calls = 0
        self.prompt = None

    def transcribe(self, audio, prompt=None):
        self.calls += 1
        return self.text


def clip(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(16_000 * seconds)).astype(np.float32)


def test_the_remote_model_receives_pictures_and_native_audio_losslessly_and_in_place(scripted):
    server = scripted()
    assistant = RemoteAssistant(server.url)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    audio = clip()
    conversation = [{"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "image", "image": picture},
                                                 {"type": "text", "text": "then"}, {"type": "audio", "audio": audio}]}]
    events = list(assistant.stream(conversation, GenerationSettings(max_new_tokens=20)))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "echo: first then"
    sent = server.requests[0]
    assert sent["model"] == MODEL_ID and sent["temperature"] == 0.0 and sent["max_tokens"] == 20
    parts = sent["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "input_audio"]
    png = base64.b64decode(parts[1]["image_url"]["url"].removeprefix("data:image/png;base64,"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(picture))
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(parts[3]["input_audio"]["data"])), dtype="float32")
    assert rate == 16_000 and np.array_equal(samples, audio)
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert (done.prompt_tokens, done.completion_tokens) == (17, 3)


def test_transcribe_mode_sends_whispers_transcript_as_text_and_shows_it(scripted):
    server = scripted()
    whisper = FakeWhisper("what colour is the circle")
    assistant = RemoteAssistant(server.url, transcriber=whisper)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": clip()}]}]
    events = list(assistant.stream(conversation, GenerationSettings(max_new_tokens=20), audio_mode="transcribe"))
    assert events[0] == Transcript(0, "what colour is the circle")
    assert server.requests[0]["messages"][0]["content"] == "what colour is the circle"
    assert "".join(e.text for e in events if isinstance(e, Token)) == "echo: what colour is the circle"
    # native mode still shows the transcript, sends the audio, and Whisper is not run again on the same clip
    list(assistant.stream(conversation, GenerationSettings(max_new_tokens=20), audio_mode="native"))
    assert server.requests[1]["messages"][0]["content"][0]["type"] == "input_audio"
    assert whisper.calls == 1


def test_sampling_settings_and_stop_strings_reach_the_model_server(scripted):
    server = scripted()
    assistant = RemoteAssistant(server.url)
    settings = GenerationSettings(max_new_tokens=7, temperature=0.7, top_p=0.9, stop=["\n\n"], seed=5)
    list(assistant.stream([{"role": "user", "content": "hi"}], settings))
    sent = server.requests[0]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"], sent["seed"]) == (7, 0.7, 0.9, ["\n\n"], 5)


def test_the_page_and_v1_answer_through_the_model_server_with_the_models_card(scripted, make_client):
    server = scripted()
    starter = describe("starter")
    assistant = RemoteAssistant(server.url, card=starter.card, generation_defaults=starter.generation_defaults)
    client = make_client(assistant)
    answer = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What colour?"}, {"type": "image_url", "image_url": {"url": data_uri(png_bytes(), "image/png")}}]}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo: What colour?"
    assert answer.json()["usage"]["prompt_tokens"] == 17
    assert server.requests[0]["temperature"] == 0.0  # the starter's own defaults are greedy
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL_ID]
    assert client.get("/api/model").json()["suggestions"] == starter.card.public("/api/model/suggestions/{index}/{kind}")["suggestions"]
    conversation = client.post("/api/conversations", json={}).json()
    reply = client.post(f"/api/conversations/{conversation['id']}/chat", json={"content": [{"type": "text", "text": "hello there"}]})
    assert reply.status_code == 200, reply.text
    events = parse_sse(reply.text)
    assert "".join(e["text"] for e in events if e["type"] == "token") == "echo: hello there"
    assert events[-1]["type"] == "done"
    stored = client.get(f"/api/conversations/{conversation['id']}").json()
    assert stored["messages"][-1]["role"] == "assistant"
    assert "echo: hello there" in json.dumps(stored["messages"][-1]["content"])


def test_concurrent_requests_are_sent_to_the_model_server_together(scripted, make_client):
    server = scripted(word_delay=0.05, words=10)
    client = make_client(RemoteAssistant(server.url), max_batch=4)
    results = []

    def ask(i):
        results.append(client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [
            {"role": "user", "content": f"question {i}"}], "max_tokens": 12}).json())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r["choices"][0]["message"]["content"].split()[2] for r in results) == ["0", "1", "2", "3"]
    assert server.most_open == 4  # one at a time would never have more than one stream open


def test_stop_closes_the_remote_call(scripted):
    server = scripted(word_delay=0.2, words=200)
    assistant = RemoteAssistant(server.url)
    cancel = threading.Event()
    events = []
    started = time.monotonic()
    for event in assistant.stream([{"role": "user", "content": "go on"}], GenerationSettings(max_new_tokens=200),
                                  cancel=cancel):
        events.append(event)
        if isinstance(event, Token):
            cancel.set()
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "cancelled"
    assert time.monotonic() - started < 10
    assert wait_until(lambda: server.client_gone == 1 and server.open_streams == 0, timeout=10)


def test_a_request_the_model_server_refuses_is_a_400_with_its_message(scripted, make_client):
    server = scripted()
    client = make_client(RemoteAssistant(server.url))
    answer = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "REFUSE"}]})
    error = assert_error(answer, 400, code="rejected_by_model_server")
    assert "refused" in error["message"]
    streamed = client.post("/v1/chat/completions", json={"model": MODEL_ID, "stream": True,
                                                         "messages": [{"role": "user", "content": "REFUSE"}]})
    assert streamed.status_code == 400 or "rejected_by_model_server" in streamed.text
    # the server is fine afterwards
    ok = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "fine"}]})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "echo: fine"


def test_a_model_server_that_went_away_is_a_503_and_omniphi_keeps_serving(scripted, make_client):
    server = scripted()
    client = make_client(RemoteAssistant(server.url))
    server.server.stop()
    answer = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
    assert_error(answer, 503, code="model_server_unavailable")
    assert client.get("/health").status_code == 200  # omniphi itself still answers


def test_connecting_to_nothing_is_a_one_line_error(scripted):
    with pytest.raises(RemoteConnectError, match="cannot reach the model server"):
        RemoteAssistant.connect("http://127.0.0.1:9/v1", "tiny")


def test_omniphi_serve_engine_vllm_without_a_server_exits_with_one_line():
    done = subprocess.run([sys.executable, "-m", "omniphi.cli", "serve", "--engine", "vllm", "--model", "tiny",
                           "--vllm-url", "http://127.0.0.1:9/v1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("omniphi: error")]
    assert len(lines) == 1 and "cannot reach the model server at http://127.0.0.1:9/v1" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_describe_reads_the_starters_card_and_greedy_defaults_without_loading_weights():
    description = describe("starter")
    assert description.name == "omniphi-starter"
    assert description.card is not None and description.card.suggestions
    assert description.generation_defaults.temperature == 0.0
    with pytest.raises(ValueError, match="unknown model"):
        describe("no-such-model")
