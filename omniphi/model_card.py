"""What a model directory says about itself, besides its weights.

- `generation_config.json` (transformers' `GenerationConfig`): how the model wants to be sampled
  when the user does not say. `do_sample: false` means greedy (temperature 0 here). The CLI, the
  API and the page start from these values; a value the user sets wins.
- `model_card.json`: a short card for people — what the model can do, what it cannot, and
  suggestions that work for it (a prompt, optionally with a sample picture and/or a spoken
  question shipped next to the card). The web page shows it on an empty chat, so a newcomer is
  never invited to ask something the model was not trained for.

- `transcription_config.json`, `{"prompt": text}`: Whisper's prompt for this model
  (`omniphi.asr.Transcriber.prompt`), e.g. the words of the small world a model was trained on.

All files are optional: without them a model is greedy, has no card and transcribes without a
prompt. Training outputs, `omniphi merge` and `flatten_trained` carry them over (`copy_model_files`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniphi.chat import GenerationSettings

GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CARD_FILE = "model_card.json"
TRANSCRIPTION_CONFIG_FILE = "transcription_config.json"
CARD_MEDIA_KINDS = ("image", "audio")
_MAX_SUGGESTIONS = 6


class ModelCardError(ValueError):
    """A model_card.json that cannot be used; the message names the file and what is wrong."""


def generation_defaults(generation_config: Any) -> GenerationSettings:
    """GenerationSettings from a transformers GenerationConfig (or None: greedy, built-in lengths).

    transformers' own default is greedy (`do_sample` False), so a model that says nothing is greedy."""
    settings = GenerationSettings()
    if generation_config is None:
        return settings
    if getattr(generation_config, "do_sample", False):
        settings.temperature = float(generation_config.temperature if generation_config.temperature is not None else 1.0)
        settings.top_p = float(generation_config.top_p if generation_config.top_p is not None else 1.0)
    if getattr(generation_config, "max_new_tokens", None):
        settings.max_new_tokens = int(generation_config.max_new_tokens)
    return settings.validate()


def greedy_generation_config(max_new_tokens: int):
    """A GenerationConfig for a model whose answers must not vary between runs (the starter)."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens)


@dataclass
class Suggestion:
    """One suggestion card: a title, a short detail line, the prompt it types, and optional media
    (paths inside the model directory) it attaches."""

    title: str
    detail: str = ""
    prompt: str = ""
    media: dict[str, Path] = field(default_factory=dict)  # kind ("image" / "audio") → file


@dataclass
class ModelCard:
    name: str
    summary: str
    limits: str = ""
    suggestions: list[Suggestion] = field(default_factory=list)

    def public(self, media_url: str) -> dict[str, Any]:
        """The card as the API returns it; `media_url` is formatted with index and kind."""
        return {
            "name": self.name, "summary": self.summary, "limits": self.limits,
            "suggestions": [
                {"title": s.title, "detail": s.detail, "prompt": s.prompt,
                 **{f"{kind}_url": media_url.format(index=i, kind=kind) for kind in s.media}}
                for i, s in enumerate(self.suggestions)
            ],
        }


def read_model_card(directory: str | Path) -> ModelCard | None:
    """The directory's card, or None if it has none. A card that is there but wrong is an error:
    a model must not be served with a card that promises what is not there."""
    directory = Path(directory)
    path = directory / MODEL_CARD_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelCardError(f"{path}: not valid JSON ({error})") from None

    def text(obj: dict, key: str, where: str, required: bool = False) -> str:
        value = obj.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise ModelCardError(f"{path}: {where}'{key}' must be a{' non-empty' if required else ''} string")
        return value

    if not isinstance(raw, dict):
        raise ModelCardError(f"{path}: expected a JSON object")
    suggestions_raw = raw.get("suggestions", [])
    if not isinstance(suggestions_raw, list) or len(suggestions_raw) > _MAX_SUGGESTIONS:
        raise ModelCardError(f"{path}: 'suggestions' must be a list of at most {_MAX_SUGGESTIONS}")
    root = directory.resolve()
    suggestions = []
    for i, item in enumerate(suggestions_raw):
        where = f"suggestions[{i}]."
        if not isinstance(item, dict):
            raise ModelCardError(f"{path}: suggestions[{i}] must be an object")
        media = {}
        for kind in CARD_MEDIA_KINDS:
            if kind not in item:
                continue
            relative = text(item, kind, where, required=True)
            file = (directory / relative).resolve()
            if not file.is_relative_to(root) or not file.is_file():
                raise ModelCardError(f"{path}: {where}{kind} {relative!r} is not a file inside {directory}")
            media[kind] = file
        suggestion = Suggestion(text(item, "title", where, True), text(item, "detail", where), text(item, "prompt", where), media)
        if not suggestion.prompt and not media:
            raise ModelCardError(f"{path}: {where} needs a prompt, an image or an audio file")
        suggestions.append(suggestion)
    return ModelCard(text(raw, "name", "", True), text(raw, "summary", "", True), text(raw, "limits", ""), suggestions)


def read_transcription_prompt(directory: str | Path) -> str | None:
    """The model's prompt for Whisper (TRANSCRIPTION_CONFIG_FILE); None without that file.
    Raises ValueError for a file that is not {"prompt": text}."""
    path = Path(directory) / TRANSCRIPTION_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    prompt = settings.get("prompt") if isinstance(settings, dict) else None
    if not isinstance(prompt, str):
        raise ValueError(f"{path} must be a JSON object with a text 'prompt'")
    return prompt


def write_transcription_prompt(directory: str | Path, prompt: str) -> None:
    (Path(directory) / TRANSCRIPTION_CONFIG_FILE).write_text(json.dumps({"prompt": prompt}, indent=2) + "\n")


def copy_model_files(source: str | Path, out: str | Path) -> None:
    """Carry the generation defaults, Whisper's prompt and the card (with the media it names) from
    one model directory to another (flatten, merge, install)."""
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (GENERATION_CONFIG_FILE, TRANSCRIPTION_CONFIG_FILE):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    card = read_model_card(source)
    if card is None:
        return
    shutil.copy(source / MODEL_CARD_FILE, out / MODEL_CARD_FILE)
    root = source.resolve()
    for suggestion in card.suggestions:
        for file in suggestion.media.values():
            target = out / file.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
