"""What the Assistant keeps between requests so that a follow-up turn costs only its new tokens.

* `MediaCache`: projected image/audio features by content hash. Media in a conversation's history
  are never encoded twice.
* `PrefixCache`: the key/value states of recent prompts (+ their answers). A new prompt is matched
  against them position by position; the longest shared prefix is reused and only the rest is
  prefilled. A position's key is its token id, except inside a media run, where it is the media's
  content hash: every image placeholder has the same token id, so ids alone would make two
  different pictures look identical.

Both are LRU and bounded in bytes (an entry larger than the whole budget is not kept).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

PositionKey = Hashable  # an int token id, or a str content hash for a position inside a media run


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def storage_bytes(tensors) -> int:
    """The memory `tensors` keep alive: their storages' whole sizes, each counted once (a view of a
    larger buffer keeps all of it)."""
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), t.device)] = storage.nbytes()
    return sum(storages.values())


class _ByteLRU:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("a cache budget cannot be negative")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._entries: OrderedDict = OrderedDict()  # key → (value, size)

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key):
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[0]

    def _put(self, key, value, size: int) -> None:
        self._drop(key)
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


class MediaCache(_ByteLRU):
    """Content hash → the projected features [n_tokens, llm_hidden] of one image or audio clip."""

    def get(self, key: str) -> torch.Tensor | None:
        return self._get(key)

    def put(self, key: str, features: torch.Tensor) -> None:
        self._put(key, features, tensor_bytes([features]))


@dataclass
class CachedPrefix:
    keys: tuple  # one PositionKey per cached position
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, len(keys), head_dim]

    def cropped(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers]


class PrefixCache(_ByteLRU):
    """Key/value states of recent prompts, found by the longest shared prefix of position keys."""

    def longest_prefix(self, keys: Sequence[PositionKey], limit: int) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the longest prefix with `keys` (at most `limit` positions) and that length."""
        best, best_length = None, 0
        for entry_keys, (entry, _) in self._entries.items():
            length = _shared_prefix(entry_keys, keys, limit)
            if length > best_length:
                best, best_length = entry, length
        if best is not None:
            self._entries.move_to_end(best.keys)
        return best, best_length

    def put(self, keys: Sequence[PositionKey], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        keys = tuple(keys)
        if not keys:
            return
        # An entry that is a prefix of the new one (the previous turn of this conversation) is redundant.
        for old in [k for k in self._entries if len(k) <= len(keys) and keys[: len(k)] == k]:
            self._drop(old)
        self._put(keys, CachedPrefix(keys, layers), storage_bytes(t for kv in layers for t in kv))


def _shared_prefix(a: Sequence, b: Sequence, limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
