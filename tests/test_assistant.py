"""The Assistant's streaming contract, on the random tiny model."""

import threading

import pytest

from omniphi.runtime.assistant import Assistant, TranscriptionUnavailableError
from omniphi.chat import Done, GenerationSettings, Token, Transcript
from tests.conftest import tone


@pytest.fixture(scope="module")
def assistant(tiny):
    return Assistant(tiny)


QUESTION = [{"role": "user", "content": "Hello, how are you today?"}]


def test_stream_yields_tokens_then_one_done_with_real_counts(assistant):
    events = list(assistant.stream(QUESTION, GenerationSettings(max_new_tokens=7)))
    assert isinstance(events[-1], Done) and all(isinstance(e, Token) for e in events[:-1])
    done = events[-1]
    expected_prompt = len(assistant.processor.encode(QUESTION, add_generation_prompt=True, with_labels=False).input_ids)
    assert done.prompt_tokens == expected_prompt
    assert done.completion_tokens <= 7
    if done.finish_reason == "length":
        assert done.completion_tokens == 7


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(assistant):
    greedy = [assistant.complete(QUESTION, GenerationSettings(max_new_tokens=8)).text for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [assistant.complete(QUESTION, GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3)).text
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_stop_string_ends_the_answer_before_it(assistant):
    full = assistant.complete(QUESTION, GenerationSettings(max_new_tokens=30)).text
    assert len(full) > 4
    stop = full[3:5]
    reply = assistant.complete(QUESTION, GenerationSettings(max_new_tokens=30, stop=[stop]))
    assert reply.finish_reason == "stop"
    assert reply.text == full[: full.find(stop)]


def test_cancel_stops_generation(assistant):
    cancel = threading.Event()
    events = []
    for event in assistant.stream(QUESTION, GenerationSettings(max_new_tokens=200), cancel=cancel):
        events.append(event)
        if isinstance(event, Token):
            cancel.set()
    done = events[-1]
    assert done.finish_reason == "cancelled"
    assert done.completion_tokens < 10


def test_abandoned_stream_leaves_the_assistant_answering_as_before(assistant, tiny):
    stream = assistant.stream(QUESTION, GenerationSettings(max_new_tokens=500))
    next(stream)
    stream.close()  # the consumer went away (e.g. a client disconnected): nothing keeps running
    settings = GenerationSettings(max_new_tokens=9)
    assert assistant.complete(QUESTION, settings).text == Assistant(tiny).complete(QUESTION, settings).text


def test_native_audio_without_transcriber_still_answers(assistant):
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}]
    events = list(assistant.stream(conversation, GenerationSettings(max_new_tokens=3)))
    assert not any(isinstance(e, Transcript) for e in events)
    with pytest.raises(TranscriptionUnavailableError):
        list(assistant.stream(conversation, GenerationSettings(max_new_tokens=3), audio_mode="transcribe"))


def test_transcribe_mode_puts_the_transcript_in_the_prompt(assistant, monkeypatch):
    class FakeWhisper:
        calls = 0
        prompt = None

        def transcribe(self, audio, prompt=None):
            FakeWhisper.calls += 1
            return "What is the capital of France?"

    monkeypatch.setattr(assistant, "transcriber", FakeWhisper())
    assistant._transcripts.clear()
    clip = tone(1.0)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": clip}]}]
    seen = {}
    original = assistant.processor.encode

    def spy(messages, **kwargs):
        seen["messages"] = messages
        return original(messages, **kwargs)

    monkeypatch.setattr(assistant.processor, "encode", spy)
    events = list(assistant.stream(conversation, GenerationSettings(max_new_tokens=2), audio_mode="transcribe"))
    assert events[0] == Transcript(0, "What is the capital of France?")
    assert seen["messages"][-1]["content"] == [{"type": "text", "text": "What is the capital of France?"}]
    list(assistant.stream(conversation, GenerationSettings(max_new_tokens=2), audio_mode="native"))
    assert FakeWhisper.calls == 1  # the transcript is cached by content


def test_cached_transcripts_are_kept_apart_by_whisper_prompt(assistant, monkeypatch):
    class EchoWhisper:
        prompt = "the model's own words"

        def transcribe(self, audio, prompt=None):
            return f"heard with {self.prompt if prompt is None else prompt!r}"

    monkeypatch.setattr(assistant, "transcriber", EchoWhisper())
    assistant._transcripts.clear()
    clip = tone(1.0)
    assert assistant.transcribe(clip) == "heard with \"the model's own words\""
    assert assistant.transcribe(clip, "a caller's words") == "heard with \"a caller's words\""
    assert assistant.transcribe(clip, "") == "heard with ''"
    assert assistant.transcribe(clip) == "heard with \"the model's own words\""


def test_long_history_is_trimmed_to_the_context(assistant, monkeypatch):
    monkeypatch.setattr(assistant, "context_tokens", 120)
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question number {i} about the picture?"},
                    {"role": "assistant", "content": f"Answer number {i}."}]
    history.append({"role": "user", "content": "And the last one?"})
    done = list(assistant.stream(history, GenerationSettings(max_new_tokens=5)))[-1]
    assert done.prompt_tokens < 120


def test_invalid_settings_are_rejected(assistant):
    with pytest.raises(ValueError):
        list(assistant.stream(QUESTION, GenerationSettings(temperature=-1)))
    with pytest.raises(ValueError):
        list(assistant.stream(QUESTION, GenerationSettings(), audio_mode="loud"))
