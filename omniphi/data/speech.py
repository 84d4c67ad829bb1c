"""Speech recognition data → omniphi conversation samples.

Each sample is user=[audio, text prompt] → assistant=transcript. With ``prompt=None`` (or "")
the user turn is the audio alone.

Sources:

* ASR manifests, JSON Lines: ``{"audio": "clips/a.flac", "text": "...", "id": "..."}`` with
  paths relative to the manifest (NeMo's ``audio_filepath`` key is accepted too).
* The LibriSpeech layout: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with
  lines ``<utterance-id> <TRANSCRIPT>`` next to ``<utterance-id>.flac``. ``root`` may be one
  subset (``LibriSpeech/train-clean-100``) or a folder holding several; it is searched
  recursively.

LibriSpeech transcripts are upper case without punctuation. By default
(``case="sentence"``) they become sentence case: lower-cased, the first letter and the word
"I" (and "I'm", "I'll", ...) capitalised, and a final period added. Why: the assistant should
answer in natural text (Whisper and chat models write sentence case), and WER scoring
normalises case and punctuation anyway. Proper nouns stay lower case: restoring them needs a
model. ``case="lower"`` and ``case="original"`` are available.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from omniphi.data.llava import DataFileError
from omniphi.data.skipping import media_skip

DEFAULT_ASR_PROMPT = "Transcribe the audio."
Case = Literal["sentence", "lower", "original"]


def librispeech_text(text: str, case: Case = "sentence") -> str:
    """Normalise an upper-case LibriSpeech transcript (see the module docstring)."""
    text = " ".join(text.split())
    if case == "original" or not text:
        return text
    words = text.lower().split(" ")
    if case == "lower":
        return " ".join(words)
    if case != "sentence":
        raise ValueError(f"case must be 'sentence', 'lower' or 'original', not {case!r}")
    words = ["I" + w[1:] if w == "i" or w.startswith("i'") else w for w in words]
    out = " ".join(words)
    out = out[0].upper() + out[1:]
    if out[-1] not in ".?!":
        out += "."
    return out


class AsrDataset:
    """Map-style dataset over (id, audio path, transcript) triples; audio decoded lazily."""

    def __init__(self, entries: list[tuple[str, str, str]], prompt: str | None = DEFAULT_ASR_PROMPT, limits=None):
        self.ids = [e[0] for e in entries]
        self.paths = [e[1] for e in entries]
        self.texts = [e[2] for e in entries]
        self.prompt = prompt or None
        self.limits = limits

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        from omniphi import media

        path = self.paths[index]
        try:
            audio = media.load_audio(path, **({"limits": self.limits} if self.limits is not None else {}))
        except (OSError, media.MediaError) as exc:
            return media_skip(self.ids[index], "audio", path, exc, index)
        user: list[dict[str, Any]] = [{"type": "audio", "audio": audio}]
        if self.prompt:
            user.append({"type": "text", "text": self.prompt})
        return {
            "id": self.ids[index],
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": self.texts[index]}]},
            ],
            "meta": {"transcript": self.texts[index]},
        }


class AsrManifestDataset(AsrDataset):
    def __init__(self, manifest: str | os.PathLike, prompt: str | None = DEFAULT_ASR_PROMPT, limits=None):
        manifest = Path(manifest)
        try:
            lines = manifest.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataFileError(f"manifest not found: {manifest}") from None
        entries = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            # A malformed manifest is the user's to fix, and it is found before training starts.
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{manifest}:{n}: not valid JSON: {exc.msg}") from None
            audio = row.get("audio", row.get("audio_filepath")) if isinstance(row, dict) else None
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(audio, str) or not isinstance(text, str):
                raise DataFileError(f"{manifest}:{n}: needs string fields 'audio' and 'text'")
            sample_id = str(row.get("id", Path(audio).stem))
            entries.append((sample_id, str(manifest.parent / audio), text.strip()))
        super().__init__(entries, prompt=prompt, limits=limits)


class LibriSpeechDataset(AsrDataset):
    def __init__(
        self,
        root: str | os.PathLike,
        prompt: str | None = DEFAULT_ASR_PROMPT,
        case: Case = "sentence",
        limits=None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DataFileError(f"LibriSpeech folder not found: {root}")
        entries = []
        # Sorted so that indices (and thus shuffles by seed) are the same on every machine.
        for trans in sorted(root.rglob("*.trans.txt")):
            for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                utt, _, text = line.strip().partition(" ")
                if not text:
                    raise DataFileError(f"{trans}:{n}: expected '<utterance-id> <transcript>'")
                entries.append((utt, str(trans.parent / f"{utt}.flac"), librispeech_text(text, case)))
        if not entries:
            raise DataFileError(f"no *.trans.txt files under {root}")
        super().__init__(entries, prompt=prompt, limits=limits)
