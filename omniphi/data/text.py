"""Plain-text corpora for the language-model stage: samples ``{"id", "text"}``, all tokens trained.

* ``.txt``: ``split="blank"`` (default): documents are separated by blank lines;
  ``split="line"``: one document per line; ``separator="<|endoftext|>"``: documents are
  separated by lines consisting of that marker (TinyStoriesV2's ``*.txt`` files), blank lines
  then stay inside documents.
* ``.jsonl``: one ``{"text": ...}`` object per line (``id`` used when present), e.g.
  TinyStories' JSON dumps converted to lines, or the output of ``omniphi data generate``.

Only byte offsets are indexed up front; text is read with ``os.pread`` when a sample is asked
for, so a 2 GB corpus costs 16 bytes per document in RAM and workers share nothing mutable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from omniphi.data.llava import DataFileError
from omniphi.data.skipping import BAD_RECORD, Skipped

Split = Literal["blank", "line"]


def _index_txt(path: Path, split: Split, separator: bytes | None) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = end = None
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            stripped = line.strip()
            if separator is not None:
                boundary = stripped == separator
            elif split == "line":
                boundary = not stripped
                if not boundary:  # every non-empty line is a whole document
                    spans.append((pos, pos + len(line)))
                    pos += len(line)
                    continue
            else:
                boundary = not stripped
            if boundary:
                if start is not None:
                    spans.append((start, end))
                    start = None
            else:
                if start is None:
                    start = pos
                end = pos + len(line)
            pos += len(line)
    if start is not None:
        spans.append((start, end))
    return spans


def _index_jsonl(path: Path) -> list[tuple[int, int]]:
    spans, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                spans.append((pos, pos + len(line)))
            pos += len(line)
    return spans


class TextDataset:
    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        split: Split = "blank",
        separator: str | None = None,
        text_field: str = "text",
    ):
        if split not in ("blank", "line"):
            raise ValueError(f"split must be 'blank' or 'line', not {split!r}")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        self.text_field = text_field
        sep = separator.encode("utf-8") if separator else None
        files, starts, ends = [], [], []
        for i, path in enumerate(self.paths):
            if not path.is_file():
                raise DataFileError(f"text file not found: {path}")
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                spans = _index_jsonl(path)
            elif suffix in (".txt", ".text", ".md", ""):
                spans = _index_txt(path, split, sep)
            else:
                raise DataFileError(f"{path}: expected a .txt or .jsonl file")
            files += [i] * len(spans)
            starts += [s for s, _ in spans]
            ends += [e for _, e in spans]
        self._file = np.asarray(files, dtype=np.int32)
        self._start = np.asarray(starts, dtype=np.int64)
        self._end = np.asarray(ends, dtype=np.int64)
        # Position of each document within its own file, for stable ids.
        first = np.searchsorted(self._file, np.arange(len(self.paths)))
        self._local = np.arange(len(self._file), dtype=np.int64) - first[self._file] if len(self._file) else self._start
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._start)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}  # descriptors do not cross processes
        return state

    def _fd(self, i: int) -> int:
        if self._pid != os.getpid():  # forked DataLoader worker: open our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(i)
        if fd is None:
            fd = self._fds[i] = os.open(self.paths[i], os.O_RDONLY)
        return fd

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        f = int(self._file[index])
        start, end = int(self._start[index]), int(self._end[index])
        raw = os.pread(self._fd(f), end - start, start)
        path = self.paths[f]
        sample_id = f"{path.stem}:{int(self._local[index])}"
        if path.suffix.lower() != ".jsonl":
            return {"id": sample_id, "text": raw.decode("utf-8", errors="replace").strip()}
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Skipped(sample_id, BAD_RECORD, f"{path}: not valid JSON: {exc}", index)
        text = row.get(self.text_field) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            return Skipped(sample_id, BAD_RECORD, f"{path}: no '{self.text_field}' text", index)
        return {"id": str(row.get("id", sample_id)), "text": text.strip()}
