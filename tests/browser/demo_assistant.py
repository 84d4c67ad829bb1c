"""A scripted assistant for the README screenshots: it streams well-formed Markdown answers
(a code block, a list) so the pictures show what the page does with a capable model.
It follows `omniphi.runtime.assistant.Assistant`'s streaming contract; nothing else uses it."""

from __future__ import annotations

import re
import threading
import time
from typing import Iterator

import numpy as np

from omniphi.chat import AudioMode, Conversation, Done, GenerationSettings, Token, Transcript, content_parts, message_text

IMAGE_ANSWER = """That's a **sunset over rolling hills**: a warm orange sky fading to pink, a pale yellow sun,
dark green hills and a row of sunflowers along the bottom edge.

Here is its palette, sampled from the picture:

```python
palette = {
    "sky": "#f49a5a",      # warm orange, top
    "haze": "#d9a88f",     # pink, near the horizon
    "sun": "#ffd666",
    "hills": "#3a5a40",
    "petals": "#f6c90e",
}
for name, colour in palette.items():
    print(f"{name:>6}: {colour}")
```
"""

CODE_ANSWER = """Here is a compact version that ignores case, spaces and punctuation:

```python
import re

def is_palindrome(text: str) -> bool:
    cleaned = re.sub(r"[^a-z0-9]", "", text.lower())
    return cleaned == cleaned[::-1]

assert is_palindrome("A man, a plan, a canal: Panama")
```

It runs in **O(n)** time. Want a version that streams over a file without loading it?
"""

FALLBACK = "Paris is the capital of France. It has been the country's capital since 987."


class DemoAssistant:
    name = "scripted-demo"  # README screenshots show layout, not a real model's answers

    def __init__(self, token_delay: float = 0.03):
        self.token_delay = token_delay
        self.generation_defaults = GenerationSettings()
        self.card = None

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        return "What is the capital of France?"

    def stream(
        self,
        messages: Conversation,
        settings: GenerationSettings,
        *,
        audio_mode: AudioMode = "native",
        cancel: threading.Event | None = None,
    ) -> Iterator:
        start = time.monotonic()
        last = messages[-1]
        parts = content_parts(last)
        clips = [p for p in parts if p["type"] == "audio"]
        for i, _ in enumerate(clips):
            yield Transcript(i, self.transcribe(np.zeros(16000, np.float32)))
        question = message_text(last).lower()
        if any(p["type"] == "image" for p in parts):
            answer = IMAGE_ANSWER
        elif "palindrome" in question or "code" in question:
            answer = CODE_ANSWER
        else:
            answer = FALLBACK
        pieces = re.findall(r"\s*\S+|\s+", answer)
        n = 0
        for piece in pieces[: settings.max_new_tokens]:
            if cancel is not None and cancel.is_set():
                yield Done("cancelled", 42, n, time.monotonic() - start)
                return
            n += 1
            yield Token(piece)
            time.sleep(self.token_delay)
        reason = "length" if len(pieces) > settings.max_new_tokens else "stop"
        yield Done(reason, 42, n, time.monotonic() - start)
