"""LLaVA's JSON data formats → omniphi conversation samples (see omniphi/chat.py).

One reader covers all of them, because they share one record shape::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                       {"from": "gpt", "value": "White and red."}, ...]}

* LLaVA-Pretrain (``blip_laion_cc_sbu_558k.json``): one human/gpt pair, the gpt value is a
  caption. ``mode="plain"`` (stage 1) drops the human text: user=[image], assistant=caption.
* LLaVA-Instruct-150K: multi-turn, ``image`` relative to COCO ``train2017/``.
* LLaVA-1.5 mix (``llava_v1_5_mix665k.json``): text-only records (no ``image``), ``<image>``
  anywhere in the first human turn, optional ``system`` turns.
* omniphi's spoken variant: an ``audio`` field (a path or a list) whose clips fill ``<audio>``
  placeholders in order, exactly as ``image`` (also a path or a list) fills ``<image>``.

Media parts go where their placeholder is (LLaVA itself always moves the image to the front;
the brief for omniphi keeps the position). Media without a placeholder are put at the start of
the first user turn, as LLaVA does. Text around a placeholder is stripped because the chat
template already renders every media part as "<image>\\n".

Records are kept as compact UTF-8 bytes (one blob + offsets) rather than Python dicts: 665k
dicts cost several GB and, touched by refcounting, get copied into every DataLoader worker.
Media are decoded in ``__getitem__`` only; a bad sample returns a ``Skipped`` marker.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from omniphi.data.skipping import BAD_RECORD, Skipped, media_skip
from omniphi.errors import UserError

Mode = Literal["plain", "conversation"]

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
_PLACEHOLDER = re.compile(r"(<image>|<audio>)")

# ShareGPT/LLaVA spellings and the OpenAI ones some converted datasets use.
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bing": "assistant",  # appears in some ShareGPT dumps
    "chatgpt": "assistant",
    "system": "system",
}

_KNOWN_KEYS = {"id", "image", "audio", "conversations"}


class RecordError(ValueError):
    """A structurally bad record (becomes a ``bad_record`` skip)."""


class DataFileError(UserError, ValueError):
    """The data file itself cannot be used (missing, not JSON, wrong top-level shape)."""


# --------------------------------------------------------------------------- record storage


class RecordStore:
    """Read-only list of JSON records from ``.json`` (a top-level list) or ``.jsonl``, stored
    as one bytes blob + int64 offsets and decoded one record at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise DataFileError(f"data file not found: {self.path}") from None
        except OSError as exc:
            raise DataFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if self.path.suffix.lower() == ".jsonl":
            # Lines are kept verbatim; an undecodable line is a per-sample skip, not a crash.
            blob, offsets = bytearray(), [0]
            for line in raw.splitlines():
                if line.strip():
                    blob += line
                    offsets.append(len(blob))
        else:
            try:
                records = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataFileError(f"{self.path} is not valid JSON: {exc}") from None
            del raw
            if isinstance(records, dict):  # a single record
                records = [records]
            if not isinstance(records, list):
                raise DataFileError(f"{self.path}: expected a JSON list of records, got {type(records).__name__}")
            blob, offsets = bytearray(), [0]
            for k, rec in enumerate(records):
                blob += json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                offsets.append(len(blob))
                records[k] = None  # free as we go: peak memory stays ~ one copy
            del records
        self._blob = bytes(blob)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def raw(self, index: int) -> bytes:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._blob[self._offsets[index] : self._offsets[index + 1]]

    def __getitem__(self, index: int) -> Any:
        """The record (a dict, normally); raises RecordError for an undecodable JSONL line."""
        data = self.raw(index)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(f"line is not valid JSON: {exc}") from None

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


# --------------------------------------------------------------------------- parsing


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RecordError(f"'{what}' must be a path or a list of paths")


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def parse_record(record: Any, mode: Mode = "conversation") -> list[dict[str, Any]]:
    """The messages of a record, media parts holding ``"path"`` (as written in the record)
    instead of decoded data. Raises RecordError for a record that cannot be trained on."""
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not an object")
    images = _as_list(record.get("image"), "image")
    audios = _as_list(record.get("audio"), "audio")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("no 'conversations' list")

    messages: list[dict[str, Any]] = []
    next_media = {"image": 0, "audio": 0}
    paths = {"image": images, "audio": audios}
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {t} is not an object")
        speaker = turn.get("from", turn.get("role"))
        role = ROLES.get(str(speaker).lower()) if speaker is not None else None
        value = turn.get("value", turn.get("content"))
        if role is None:
            raise RecordError(f"turn {t} has unknown speaker {speaker!r}")
        if not isinstance(value, str):
            raise RecordError(f"turn {t} has no text 'value'")
        if role == "user":
            parts = []
            for piece in _PLACEHOLDER.split(value):
                if piece in (IMAGE_TOKEN, AUDIO_TOKEN):
                    kind = piece[1:-1]
                    k = next_media[kind]
                    if k >= len(paths[kind]):
                        raise RecordError(
                            f"{piece} placeholder #{k + 1} but the record has {len(paths[kind])} {kind} path(s)"
                        )
                    next_media[kind] = k + 1
                    parts.append({"type": kind, "path": paths[kind][k]})
                elif piece.strip():
                    parts.append(_text_part(piece.strip()))
            messages.append({"role": "user", "content": parts})
        elif role == "system":
            if messages:  # templates accept a system message only first
                raise RecordError(f"system turn at position {t}")
            messages.append({"role": "system", "content": [_text_part(value.strip())]})
        else:
            messages.append({"role": "assistant", "content": [_text_part(value.strip())]})

    # Media without placeholders: at the start of the first user turn (LLaVA's convention).
    leftovers = [{"type": kind, "path": p} for kind in ("image", "audio") for p in paths[kind][next_media[kind]:]]

    # Nothing to condition an opening assistant turn on; nothing to train on after the last
    # answer (ShareGPT dumps have both).
    body_start = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) > body_start and messages[body_start]["role"] == "assistant":
        del messages[body_start]
    while len(messages) > body_start and messages[-1]["role"] != "assistant":
        messages.pop()
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("no assistant answer")
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is None:
        raise RecordError("no user turn")
    first_user["content"][:0] = leftovers

    if mode == "plain":
        media = [{"type": kind, "path": p} for kind in ("image", "audio") for p in paths[kind]]
        if not media:
            raise RecordError("plain mode needs an image (or audio) in the record")
        answer = next(m for m in messages if m["role"] == "assistant")
        return [{"role": "user", "content": media}, answer]
    if mode != "conversation":
        raise ValueError(f"mode must be 'plain' or 'conversation', not {mode!r}")
    for m in messages:
        if not m["content"]:
            m["content"] = [_text_part("")]
    return messages


# --------------------------------------------------------------------------- dataset


class LlavaDataset:
    """Map-style dataset of LLaVA JSON/JSONL records.

    ``image_folder`` / ``audio_folder``: where relative media paths are resolved (default: the
    JSON file's directory; absolute paths are used as they are). ``__getitem__`` returns
    ``{"id", "messages", "meta"}`` (``meta``: the record's other fields, e.g. the shapes
    data's ``answer``) or a :class:`~omniphi.data.skipping.Skipped` marker.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_folder: str | os.PathLike | None = None,
        mode: Mode = "conversation",
        audio_folder: str | os.PathLike | None = None,
        limits=None,
    ):
        if mode not in ("plain", "conversation"):
            raise ValueError(f"mode must be 'plain' or 'conversation', not {mode!r}")
        self.json_path = Path(json_path)
        self.records = RecordStore(self.json_path)
        self.image_folder = Path(image_folder) if image_folder is not None else self.json_path.parent
        self.audio_folder = Path(audio_folder) if audio_folder is not None else self.json_path.parent
        self.mode = mode
        self.limits = limits

    def __len__(self) -> int:
        return len(self.records)

    def _default_id(self, index: int) -> str:
        return f"{self.json_path.stem}:{index}"

    def record(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def _resolve(self, kind: str, path: str) -> Path:
        base = self.image_folder if kind == "image" else self.audio_folder
        return base / path  # an absolute `path` wins over `base` in pathlib

    def __getitem__(self, index: int):
        from omniphi import media

        try:
            record = self.records[index]
        except RecordError as exc:
            return Skipped(self._default_id(index), BAD_RECORD, str(exc), index)
        sample_id = str(record.get("id", self._default_id(index))) if isinstance(record, dict) else self._default_id(index)
        try:
            messages = parse_record(record, self.mode)
        except RecordError as exc:
            return Skipped(sample_id, BAD_RECORD, str(exc), index)

        kwargs = {"limits": self.limits} if self.limits is not None else {}
        for message in messages:
            for part in message["content"]:
                kind = part["type"]
                if kind == "text":
                    continue
                path = self._resolve(kind, part.pop("path"))
                try:
                    part[kind] = media.load_image(path, **kwargs) if kind == "image" else media.load_audio(path, **kwargs)
                except (OSError, media.MediaError) as exc:
                    return media_skip(sample_id, kind, str(path), exc, index)
        meta = {k: v for k, v in record.items() if k not in _KNOWN_KEYS}
        return {"id": sample_id, "messages": messages, "meta": meta}
