"""Chat templates: a conversation → one prompt string + the character spans that are trained.

Registry, not substring dispatch: a template is chosen by name (`OmniConfig.chat_template_name`);
"auto" means the tokenizer's own chat template where it has one, else "llava-phi".
Media parts render as their placeholder token followed by a newline (LLaVA's "<image>\n"); the
processor expands each placeholder to the exact number of feature tokens afterwards.

Where a message's media go is the model's `media_placement` (`MEDIA_PLACEMENTS`): "as_given" keeps
the parts in the order the user sent them; "images_first" puts a message's pictures before its other
parts (text and audio, a spoken question included, in their order) — LLaVA's training layout, and
what vLLM and Ollama do for such models. A
model that reads a picture after the question worse than before it (a small one) records
"images_first", so the user's part order does not change its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from omniphi.chat import Conversation, content_parts

if TYPE_CHECKING:
    from omniphi.processing import OmniProcessor

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


MEDIA_PLACEMENTS = ("as_given", "images_first")


def check_media_placement(placement: str) -> str:
    if placement not in MEDIA_PLACEMENTS:
        raise ValueError(f"media_placement must be one of {', '.join(MEDIA_PLACEMENTS)}, not {placement!r}")
    return placement


def place_media(messages: Conversation, placement: str) -> Conversation:
    """The conversation with each message's pictures where `placement` puts them. A message whose
    content is a string (placeholders written in it) is left as it is."""
    if check_media_placement(placement) == "as_given":
        return messages
    placed = []
    for message in messages:
        if isinstance(message.get("content"), str):
            placed.append(message)
            continue
        parts = content_parts(message)
        placed.append({**message, "content": [p for p in parts if p["type"] == "image"]
                       + [p for p in parts if p["type"] != "image"]})
    return placed


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


# Renders one message's content as omniphi's templates do (omniphi.templates.render_content): a string
# as it is; a list of parts in order, text as text, each image as "<image>\n" and each audio clip as
# "<audio>\n" (with media_placement "images_first": first the images, then the other parts). Takes the part
# shapes of llava-hf processors and of vLLM's "openai" content format ({"type": "image"},
# {"type": "audio"}, {"type": "text", "text": ...}) as well as plain strings.
_FLATTEN_MACRO = """\
{%- macro omniphi_content(message) -%}
{%- if message['content'] is string -%}{{ message['content'] }}
{%- else -%}{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}TEXT_IN_ORDER
{%- elif part['type'] == 'image' -%}{{ IMAGE_TOKEN }}{{ '\\n' }}AUDIO_BRANCH
{%- else -%}{{ raise_exception('this model takes MEDIA parts, not ' ~ part['type']) }}
{%- endif -%}{%- endfor -%}TEXT_LAST{%- endif -%}
{%- endmacro -%}
"""
_TEXT_PART = "{{ part['text'] }}"

# The tokenizer's own template, run on the flattened messages (so it sees strings, as it expects).
_FLATTENED_MESSAGES = """\
{%- set omniphi = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- set omniphi.messages = omniphi.messages + [{'role': message['role'], 'content': omniphi_content(message)}] -%}
{%- endfor -%}
{%- set messages = omniphi.messages -%}
"""

# omniphi.templates.llava_phi as Jinja: "{system} USER: {q} ASSISTANT: {a}EOS" (Phi-2 has no template).
_LLAVA_PHI = """\
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = omniphi_content(messages[0]) -%}{%- set turns = messages[1:] -%}
{%- else -%}{%- set system = DEFAULT_SYSTEM -%}{%- set turns = messages -%}{%- endif -%}
BOS{{ system }}{{ ' ' }}
{%- for message in turns -%}
{%- if message['role'] == 'user' -%}USER: {{ omniphi_content(message) }}
{%- if add_generation_prompt or not loop.last %} ASSISTANT:{% endif -%}
{%- elif message['role'] == 'assistant' -%}{{ ' ' }}{{ omniphi_content(message) }}{{ eos_token }}
{%- else -%}{{ raise_exception('role ' ~ message['role'] ~ ' cannot appear after the first message') }}
{%- endif -%}
{%- endfor -%}
"""


def jinja_chat_template(processor: "OmniProcessor", with_audio: bool) -> str:
    """A Jinja chat template that renders a conversation exactly as `processor.render` does, for
    engines that render prompts themselves: transformers' processors (the llava-hf export) and
    vLLM. Message content may be a string (placeholders written in it) or a list of text/image
    (and, `with_audio`, audio) parts. Media are left as one placeholder each; the engine expands
    them to the feature count."""
    audio = "{{ " + _jinja_string(processor.audio_token) + " }}{{ '\\n' }}"
    images_first = check_media_placement(processor.config.media_placement) == "images_first"
    audio_branch = ""
    if with_audio:  # with images first, the first pass writes only the images; the second the rest
        audio_branch = "\n{%- elif part['type'] == 'audio' -%}" + ("" if images_first else audio)
    rest = ("{%- for part in message['content'] if part['type'] != 'image' -%}{%- if part['type'] == 'text' -%}"
            + _TEXT_PART + "{%- else -%}" + audio + "{%- endif -%}{%- endfor -%}")
    macro = (_FLATTEN_MACRO.replace("IMAGE_TOKEN", _jinja_string(processor.image_token))
             .replace("AUDIO_BRANCH", audio_branch).replace("MEDIA", "text, image and audio" if with_audio else "text and image")
             .replace("TEXT_IN_ORDER", "" if images_first else _TEXT_PART)
             .replace("TEXT_LAST", rest if images_first else ""))
    if processor.template == "tokenizer":
        return macro + _FLATTENED_MESSAGES + processor.tokenizer.chat_template
    if processor.template == "llava-phi":
        bos = "{{ bos_token }}" if processor._wants_bos() else ""
        body = _LLAVA_PHI.replace("DEFAULT_SYSTEM", _jinja_string(DEFAULT_SYSTEM_PROMPT)).replace("BOS", bos, 1)
        return macro + body
    raise ValueError(f"no Jinja form of omniphi's {processor.template!r} chat template")


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
