"""Helpers shared by the eval tests: fixture paths, a scripted assistant that answers from a
table (to check the runner's arithmetic exactly) and a speaker that encodes questions."""

import numpy as np

from tests.conftest import FIXTURES

EVAL = FIXTURES / "eval"
LIBRISPEECH = FIXTURES / "librispeech"


class FakeReply:
    def __init__(self, text):
        self.text = text
        self.transcripts = []


class ScriptedAssistant:
    """Same `complete`/`transcribe` interface as omniphi.runtime.assistant.Assistant, no model: answers
    are looked up by the question text found in the prompt; audio is "heard" through `heard`
    (audio code → text), so speech conditions can be scripted too."""

    name = "scripted"

    def __init__(self, answers, heard=None, native_answer="I heard a sound."):
        self.answers = answers  # question text → answer
        self.heard = heard or {}  # audio code → what Whisper "hears"
        self.native_answer = native_answer
        self.calls = []

    def transcribe(self, audio):
        return self.heard[int(audio[0])]

    def complete(self, messages, settings, audio_mode="native"):
        assert audio_mode == "native"  # the runner puts transcripts in itself
        parts = messages[-1]["content"]
        self.calls.append([p["type"] for p in parts])
        if any(p["type"] == "audio" for p in parts):
            return FakeReply(self.native_answer)
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        for question, answer in self.answers.items():
            if question in text:
                return FakeReply(answer)
        return FakeReply("")


class CodeSpeaker:
    """Stands in for tts.Speaker: the "audio" of a question is a constant signal whose value is
    the question's code, so ScriptedAssistant.transcribe can look it up."""

    def __init__(self):
        self.codes = {}

    def speak(self, text, key=None):
        code = self.codes.setdefault(text, len(self.codes) + 1)
        return np.full(1600, float(code), dtype=np.float32)
