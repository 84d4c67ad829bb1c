"""Chat templates: a conversation → one prompt string + the character spans that are trained.

Registry, not substring dispatch: a template is chosen by name (`OmniConfig.chat_template_name`);
"auto" means the tokenizer's own chat template where it has one, else "llava-phi".
Media parts render as their placeholder token followed by a newline (LLaVA's "<image>\n"); the
processor expands each placeholder to the exact number of feature tokens afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from omniphi.chat import Conversation, content_parts

DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class RenderedPrompt:
    text: str
    # [start, end) character spans of each assistant answer *including* its end-of-turn token:
    # exactly the characters whose tokens are trained (labels ≠ -100).
    answer_spans: list[tuple[int, int]]


def render_content(message, image_token: str, audio_token: str) -> str:
    pieces = []
    for part in content_parts(message):
        kind = part["type"]
        if kind == "text":
            pieces.append(part["text"])
        elif kind == "image":
            pieces.append(image_token + "\n")
        elif kind == "audio":
            pieces.append(audio_token + "\n")
        else:
            raise ValueError(f"unknown content part type {kind!r}")
    return "".join(pieces)


def llava_phi(messages: Conversation, tokenizer, image_token, audio_token, add_generation_prompt) -> RenderedPrompt:
    """LLaVA-Phi / TinyLLaVA's Phi-2 template:
    "{system} USER: {q1} ASSISTANT: {a1}<|endoftext|>USER: {q2} ASSISTANT:" — Phi-2 has no template."""
    eos = tokenizer.eos_token
    system = DEFAULT_SYSTEM_PROMPT
    if messages and messages[0]["role"] == "system":
        system = render_content(messages[0], image_token, audio_token)
        messages = messages[1:]
    text, spans = system + " ", []
    for message in messages:
        body = render_content(message, image_token, audio_token)
        if message["role"] == "user":
            text += "USER: " + body + " ASSISTANT:"
        elif message["role"] == "assistant":
            start = len(text)
            text += " " + body + eos
            spans.append((start, len(text)))
        else:
            raise ValueError(f"role {message['role']!r} cannot appear after the first message")
    if not add_generation_prompt and messages and messages[-1]["role"] == "user":
        text = text[: -len(" ASSISTANT:")]
    return RenderedPrompt(text, spans)


def tokenizer_template(messages: Conversation, tokenizer, image_token, audio_token, add_generation_prompt) -> RenderedPrompt:
    """The tokenizer's own Jinja chat template (ChatML for SmolLM2, Llama-3's, ...).

    Answer spans are found by locating each assistant message's text in the rendered prompt, in
    order, and extending it over the end-of-turn token that follows (the tokenizer's EOS)."""
    flat = [{"role": m["role"], "content": render_content(m, image_token, audio_token)} for m in messages]
    text = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)
    spans, cursor = [], 0
    for message in flat:
        if message["role"] != "assistant":
            continue
        start = text.find(message["content"], cursor)
        if start < 0:
            raise ValueError("the chat template does not reproduce an assistant answer verbatim")
        end = start + len(message["content"])
        end_of_turn = end_of_turn_token(tokenizer, text, end)
        end += len(end_of_turn)
        spans.append((start, end))
        cursor = end
    return RenderedPrompt(text, spans)


def end_of_turn_token(tokenizer, text: str, position: int) -> str:
    """The special token that closes an answer at `position` (ChatML's <|im_end|>, Llama-3's
    <|eot_id|>, ...). It is trained as the answer's EOS and generation stops on it."""
    candidates = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    for token in candidates:
        if token and text.startswith(token, position):
            return token
    raise ValueError(f"the chat template does not close an assistant answer with a special token: {text[position:position + 20]!r}")


TEMPLATES: dict[str, Callable[..., RenderedPrompt]] = {
    "llava-phi": llava_phi,
    "tokenizer": tokenizer_template,
}


def resolve_template_name(name: str, tokenizer) -> str:
    if name == "auto":
        return "tokenizer" if getattr(tokenizer, "chat_template", None) else "llava-phi"
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return name
