"""A deterministic test double of `omniphi.runtime.assistant.Assistant` for the server tests.

Same interface and streaming contract as the real one (Transcript* for the audio clips of the last
user message, Token*, exactly one Done; `cancel` honoured within one token; settings validated;
stop strings cut the answer), but the answer is canned, so the API layer can be tested in
milliseconds. It also records what it was asked and notices concurrent use (the real model is
not thread-safe: the engine must never call it from two threads at once).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Iterator

import numpy as np
from PIL import Image

from omniphi.chat import AudioMode, Conversation, Done, GenerationSettings, Token, Transcript, content_parts

ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower."
TRANSCRIPT = "What is the capital of France?"


class FakeAssistant:
    def __init__(self, answer: str = ANSWER, *, token_delay: float = 0.0, transcript: str = TRANSCRIPT,
                 name: str = "omniphi-fake", fail_after: int | None = None, ignore_cancel: bool = False,
                 generation_defaults: GenerationSettings | None = None, card=None):
        self.name = name
        self.generation_defaults = generation_defaults or GenerationSettings()  # as a real model's: greedy
        self.card = card  # an omniphi.model_card.ModelCard, or None (as a model directory without one)
        self.answer = answer
        self.token_delay = token_delay
        self.transcript = transcript
        self.fail_after = fail_after  # raise RuntimeError after this many tokens
        self.ignore_cancel = ignore_cancel
        self.calls: list[dict] = []  # what stream()/transcribe() were given
        self.cancelled = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    # -- bookkeeping -----------------------------------------------------------------------------
    def _enter(self):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _exit(self):
        with self._lock:
            self.active -= 1

    # -- the Assistant interface -------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        self._enter()
        try:
            _check_audio(audio)
            self.calls.append({"kind": "transcribe", "seconds": len(audio) / 16000, "prompt": prompt})
            if self.token_delay:
                time.sleep(self.token_delay)
            return self.transcript
        finally:
            self._exit()

    def stream(self, messages: Conversation, settings: GenerationSettings, *, audio_mode: AudioMode = "native",
               cancel: threading.Event | None = None) -> Iterator:
        self._enter()
        try:
            yield from self._stream(messages, settings, audio_mode, cancel)
        finally:
            self._exit()

    def _stream(self, messages, settings, audio_mode, cancel):
        started = time.perf_counter()
        settings.validate()
        if audio_mode not in ("native", "transcribe"):
            raise ValueError(f"audio_mode must be 'native' or 'transcribe', not {audio_mode!r}")
        images, clips, prompt_tokens = _check_messages(messages)
        self.calls.append({"kind": "stream", "messages": messages, "settings": settings, "audio_mode": audio_mode,
                           "images": images, "audio": clips})
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        for index, part in enumerate(p for p in content_parts(messages[last_user]) if p["type"] == "audio"):
            yield Transcript(index, self.transcript)

        text, finish = self.answer, None
        cuts = [text.find(s) for s in settings.stop if s and s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        pieces = re.findall(r"\s*\S+(?:\s+$)?", text)  # joined back, exactly `text`
        produced = 0
        for piece in pieces:
            if produced >= settings.max_new_tokens:
                finish = "length"
                break
            if cancel is not None and not self.ignore_cancel:
                if cancel.wait(self.token_delay) if self.token_delay else cancel.is_set():
                    self.cancelled += 1
                    yield Done("cancelled", prompt_tokens, produced, time.perf_counter() - started)
                    return
            elif self.token_delay:
                time.sleep(self.token_delay)
            if self.fail_after is not None and produced >= self.fail_after:
                raise RuntimeError("fake model failure")
            produced += 1
            yield Token(piece)
        yield Done(finish or "stop", prompt_tokens, produced, time.perf_counter() - started)

    def complete(self, messages, settings, *, audio_mode="native"):
        from omniphi.runtime.assistant import Assistant

        return Assistant.complete(self, messages, settings, audio_mode=audio_mode)


def _check_audio(audio) -> None:
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1, "16 kHz mono float32"


def _check_messages(messages) -> tuple[int, int, int]:
    """What the real processor would insist on: the chat shape with decoded media. Returns
    (images, audio clips, a deterministic prompt-token count)."""
    assert messages and any(m["role"] == "user" for m in messages)
    images = clips = tokens = 0
    for i, message in enumerate(messages):
        assert message["role"] in ("system", "user", "assistant"), message["role"]
        assert message["role"] != "system" or i == 0, "a system message only comes first"
        for part in content_parts(message):
            if part["type"] == "text":
                assert isinstance(part["text"], str)
                tokens += len(part["text"].split())
            elif part["type"] == "image":
                assert isinstance(part["image"], Image.Image) and part["image"].mode == "RGB"
                images += 1
                tokens += 16
            elif part["type"] == "audio":
                _check_audio(part["audio"])
                clips += 1
                tokens += max(1, int(len(part["audio"]) / 16000 * 6.25))
            else:
                raise AssertionError(f"unknown part {part['type']!r}")
        tokens += 3  # role markers
    return images, clips, tokens
