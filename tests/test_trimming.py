"""Fitting a conversation into the context: the newest exchanges, with work bounded by the context."""

import threading

import numpy as np
import pytest

from omniphi.chat import Done, GenerationSettings
from omniphi.processing import SampleTooLongError
from omniphi.runtime.assistant import Assistant
from omniphi.trimming import PromptCancelled, exchanges, fit_prompt

SYSTEM = {"role": "system", "content": "You are terse."}


def history(n_exchanges: int, text: str = "Question {i} about the weather today?") -> list[dict]:
    turns = []
    for i in range(n_exchanges):
        turns += [{"role": "user", "content": text.format(i=i)}, {"role": "assistant", "content": f"Answer {i}."}]
    return turns + [{"role": "user", "content": "And the last one?"}]


class CountingProcessor:
    """The real processor, counting how many messages each call encodes."""

    def __init__(self, processor):
        self.processor = processor
        self.messages_encoded = 0

    def encode(self, messages, **kwargs):
        self.messages_encoded += len(messages)
        return self.processor.encode(messages, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_exchanges_start_at_user_messages():
    turns = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "a"},
             {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    assert [[m["content"] for m in g] for g in exchanges(turns)] == [["hello"], ["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("budget", [60, 120, 200])
def test_keeps_the_system_message_and_as_many_newest_exchanges_as_fit(tiny, budget):
    processor = tiny.processor
    conversation = [SYSTEM] + history(30)
    sample = fit_prompt(processor, conversation, budget)
    assert len(sample.input_ids) < budget
    text = processor.tokenizer.decode(sample.input_ids)
    assert "You are terse." in text and "And the last one?" in text
    kept = [i for i in range(30) if f"Question {i} about" in text]
    assert kept == list(range(30 - len(kept), 30))  # a suffix of the history, by whole exchanges
    assert all(f"Answer {i}." in text for i in kept)
    # Maximal: one more exchange would not have fit.
    one_more = [SYSTEM] + history(30)[2 * (29 - len(kept)):]
    assert len(processor.encode(one_more, add_generation_prompt=True, with_labels=False).input_ids) >= budget


def test_work_is_linear_in_the_conversation(tiny):
    """10,000 one-character exchanges: one pass over them, then about what the context holds (the
    old loop re-encoded everything after dropping each pair: quadratic)."""
    counting = CountingProcessor(tiny.processor)
    conversation = history(10_000, text="{i}")
    sample = fit_prompt(counting, conversation, 200)
    assert len(sample.input_ids) < 200
    kept_messages = len(sample.input_ids)  # at least one token each
    assert counting.messages_encoded <= len(conversation) + 3 * kept_messages + 10


def test_a_conversation_that_fits_is_encoded_once(tiny):
    counting = CountingProcessor(tiny.processor)
    conversation = [SYSTEM] + history(3)
    sample = fit_prompt(counting, conversation, 10_000)
    assert counting.messages_encoded == len(conversation)
    expected = tiny.processor.encode(conversation, add_generation_prompt=True, with_labels=False)
    assert sample.input_ids.tolist() == expected.input_ids.tolist()


def test_the_assistant_trims_in_bounded_work(tiny, monkeypatch):
    assistant = Assistant(tiny, context_tokens=200)
    counting = CountingProcessor(tiny.processor)
    monkeypatch.setattr(assistant, "processor", counting)
    done = list(assistant.stream(history(1_000, text="{i}"), GenerationSettings(max_new_tokens=2)))[-1]
    assert isinstance(done, Done) and done.prompt_tokens < 200
    # One pass plus the kept part; the old loop re-encoded everything per dropped pair: ~1,000,000.
    assert counting.messages_encoded < 2 * 2_001 + 1_000


def test_a_newest_exchange_longer_than_the_context_is_refused(tiny):
    with pytest.raises(SampleTooLongError, match="context is 50"):
        fit_prompt(tiny.processor, [SYSTEM, {"role": "user", "content": "word " * 200}], 50)


def test_cancel_stops_fitting_and_the_assistant_answers_cancelled(tiny):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PromptCancelled):
        fit_prompt(tiny.processor, history(100), 200, cancel)
    events = list(Assistant(tiny, context_tokens=200).stream(history(100), GenerationSettings(max_new_tokens=5),
                                                             cancel=cancel))
    assert events == [Done("cancelled", 0, 0, events[-1].seconds)]


def test_cancel_during_transcription_stops_before_the_next_clip(tiny):
    """Transcribe mode: a Stop (or the deadline) between clips ends the answer as cancelled."""
    cancel = threading.Event()

    class Whisper:
        calls = 0
        prompt = None

        def transcribe(self, audio, prompt=None):
            Whisper.calls += 1
            cancel.set()  # the client goes away while the first clip is transcribed
            return "hello"

    assistant = Assistant(tiny, context_tokens=200)
    assistant.transcriber = Whisper()
    clip = {"type": "audio", "audio": np.zeros(16_000, dtype=np.float32)}
    conversation = [{"role": "user", "content": [clip, dict(clip, audio=np.ones(16_000, dtype=np.float32) * 0.1)]}]
    events = list(assistant.stream(conversation, GenerationSettings(max_new_tokens=5), audio_mode="transcribe",
                                   cancel=cancel))
    assert Whisper.calls == 1
    assert [type(e) for e in events] == [Done] and events[0].finish_reason == "cancelled"
