"""The conversation types shared by the processor, the data loaders, the CLI, the server and eval.

A conversation is a list of messages in the shape transformers' multimodal chat templates use:

    {"role": "system" | "user" | "assistant",
     "content": [ {"type": "text",  "text": "What is this?"},
                  {"type": "image", "image": <PIL.Image.Image RGB>},
                  {"type": "audio", "audio": <np.ndarray float32, 16 kHz mono>} ]}

A plain string is accepted as content and means one text part. Images and audio are already
decoded here: untrusted bytes go through `omniphi.media` first, which enforces limits.
Media parts sit where they occur in the text (an image before or after the question, several
per message, in any turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

Message = dict[str, Any]
Conversation = list[Message]

AudioMode = Literal["native", "transcribe"]


def content_parts(message: Message) -> list[dict[str, Any]]:
    """The message's content as a list of parts (a plain string becomes one text part)."""
    content = message.get("content", "")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def message_text(message: Message) -> str:
    """The text parts of a message joined, media left out."""
    return "".join(p["text"] for p in content_parts(message) if p["type"] == "text")


@dataclass
class GenerationSettings:
    """How to sample an answer. temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def validate(self) -> "GenerationSettings":
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if len(self.stop) > 4:
            raise ValueError("at most 4 stop strings")
        return self


# Events streamed by `Assistant.stream` (see omniphi/runtime/assistant.py), in this order:
# Transcript* (one per audio clip in the *last* user message, before any text), Token*, Done.


@dataclass
class Transcript:
    """Whisper's transcript of an audio clip of the conversation (index counts clips in order)."""

    index: int
    text: str


@dataclass
class Token:
    """A piece of answer text (one or more tokens, always valid UTF-8)."""

    text: str


@dataclass
class Done:
    """End of the answer. finish_reason: "stop" (EOS or a stop string), "length", or "cancelled"."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)  # the answer's tokens (a final EOS included)
    logprobs: list[float] = field(default_factory=list)  # log p of each of them under the model


Event = Union[Transcript, Token, Done]


@dataclass
class Reply:
    """A whole answer, as `Assistant.complete` returns it."""

    text: str
    transcripts: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)  # the answer's tokens (a final EOS included)
    logprobs: list[float] = field(default_factory=list)  # log p of each of them under the model
