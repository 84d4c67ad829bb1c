"""Audio as the LLM sees it: Whisper transcripts (cached by content hash) and the two audio modes.

Shared by the local `Assistant` and the `RemoteAssistant` (an LLM served by vLLM), so that both
put the same transcript in the same place of the prompt and show the user the same transcripts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

from omniphi.chat import AudioMode, Conversation, content_parts
from omniphi.errors import UserError
from omniphi.trimming import PromptCancelled

AUDIO_MODES = ("native", "transcribe")


class TranscriptionUnavailableError(UserError, RuntimeError):
    """The loaded model has no Whisper decoder (e.g. the random `tiny` preset)."""


class TranscriptCache:
    """Transcripts of recent clips by content hash: a follow-up turn does not run Whisper again
    on the audio already in its history."""

    def __init__(self, limit: int = 256):
        self.limit = limit
        self._entries: OrderedDict[str, str] = OrderedDict()

    def transcribe(self, transcriber, audio: np.ndarray, prompt: str | None = None) -> str:
        """``transcriber``'s text of ``audio``; ``prompt`` as in ``omniphi.asr.Transcriber.transcribe``."""
        key = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
        key.update(repr(transcriber.prompt if prompt is None else prompt).encode())  # a prompt changes the text
        key = key.hexdigest()
        if key not in self._entries:
            self._entries[key] = transcriber.transcribe(audio, prompt=prompt)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


def prepare_audio(messages: Conversation, audio_mode: AudioMode, transcribe: Callable[[np.ndarray], str], *,
                  has_transcriber: bool, cancel: threading.Event | None = None) -> tuple[Conversation, list[str]]:
    """The conversation the LLM sees, and the transcripts of the last user message's clips (shown to
    the user in both modes, when the model has a speech recogniser).

    native: audio parts stay audio. transcribe: every audio part becomes a text part holding its
    transcript. Raises PromptCancelled if `cancel` is set before a transcription."""
    if audio_mode not in AUDIO_MODES:
        raise ValueError(f"audio_mode must be 'native' or 'transcribe', not {audio_mode!r}")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    shown: list[str] = []
    prepared = []
    for i, message in enumerate(messages):
        parts = []
        for part in content_parts(message):
            if part["type"] != "audio":
                parts.append(part)
                continue
            needs_text = audio_mode == "transcribe"
            transcript = None
            if cancel is not None and cancel.is_set():
                raise PromptCancelled("cancelled while transcribing")
            if needs_text or (i == last_user and has_transcriber):
                transcript = transcribe(part["audio"])
            if i == last_user and transcript is not None:
                shown.append(transcript)
            parts.append({"type": "text", "text": transcript} if needs_text else part)
        prepared.append({**message, "content": parts})
    return prepared, shown
