"""The official `openai` Python client against a live uvicorn server (127.0.0.1, random port)."""

from __future__ import annotations

import base64

import openai
import pytest

from omniphi.chat import GenerationSettings
from omniphi.serve.engine import ChatRequest, Engine
from tests.serve.conftest import API_KEY, SPEECH, data_uri, png_bytes, speech
from tests.serve.fake_assistant import ANSWER, TRANSCRIPT, FakeAssistant


@pytest.fixture
def server(live):
    return live(FakeAssistant(), api_key=API_KEY)


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)


def test_chat_text(oai):
    completion = oai.chat.completions.create(model="omniphi-fake", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=64)
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == len(ANSWER.split())
    assert completion.model == "omniphi-fake"


def test_chat_image_and_audio(oai, server):
    image = data_uri(png_bytes((16, 16)), "image/png")
    audio = base64.b64encode(speech("capital.wav")).decode()
    completion = oai.chat.completions.create(model="omniphi-fake", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe both"},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    ]}])
    assert completion.choices[0].message.content == ANSWER
    assert completion.model_extra["omniphi"] == {"transcripts": [TRANSCRIPT]}
    call = server.state.engine.assistant.calls[-1]
    assert call["images"] == 1 and call["audio"] == 1


def test_streaming_with_usage(oai):
    stream = oai.chat.completions.create(model="omniphi-fake", messages=[{"role": "user", "content": "Hi"}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ANSWER.split())
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
def test_transcriptions(oai, fmt):
    with open(SPEECH / "capital.webm", "rb") as f:
        result = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt,
                                                 prompt="Capitals: Paris.")
    if fmt == "text":
        assert result == TRANSCRIPT
    else:
        assert result.text == TRANSCRIPT
    if fmt == "verbose_json":
        assert result.language == "en" and 1.5 < result.duration < 2.3


def test_models(oai):
    assert [m.id for m in oai.models.list()] == ["omniphi-fake"]


def test_typed_exceptions(oai, server):
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"

    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.param == "n"

    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert info.value.code == "remote_media_disabled"

    with pytest.raises(openai.BadRequestError) as info:  # a wrong type
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], temperature="hot")
    assert info.value.param == "temperature"

    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4")

    # Bad media is a BadRequestError, as from OpenAI (it was a bare APIStatusError: 415), with a precise code.
    for url, code in [(data_uri(b"%PDF-1.4", "image/png"), "unsupported_media_type"),
                      (data_uri(png_bytes()[:60], "image/png"), "invalid_media")]:
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model="m", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}])
        assert info.value.code == code and info.value.body["type"] == "invalid_request_error"
        assert info.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.BadRequestError) as info:  # audio the decoder cannot read
        oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 3))
    assert info.value.code == "invalid_media"

    # The server still answers normally afterwards.
    assert oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).choices


def test_rate_limit_and_unavailable(live):
    engine = Engine(FakeAssistant(token_delay=0.2), max_queue=0)
    server = live(engine)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    running = engine.submit(ChatRequest([{"role": "user", "content": "x"}], GenerationSettings()))
    try:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.response.headers["retry-after"]
        with pytest.raises(openai.RateLimitError):  # streaming requests are refused before streaming
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    finally:
        running.cancel()
    engine.stop()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503


def test_error_mid_stream_raises_api_error(live):
    server = live(FakeAssistant(fail_after=2))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                    stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got[1:] == ["The", " capital"]
    assert "Traceback" not in str(info.value)
