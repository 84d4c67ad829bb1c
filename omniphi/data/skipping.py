"""Counted, logged skipping of bad samples (missing/corrupt media, malformed records).

A dataset's ``__getitem__`` returns a :class:`Skipped` marker (falsy, like ``None``) for a bad
sample instead of raising, so one broken JPEG among 665k never kills an epoch. Two ways to
turn markers into good samples:

* :class:`SkippingDataset` wraps a dataset and substitutes the next good index. The marker of
  the requested (bad) index rides along on the returned sample under ``sample["skipped"]``,
  so each bad sample is counted once per epoch, when it is drawn.
* :class:`SkipCollator` wraps a collate function: drops markers (and ``None``) from the list,
  pops ``"skipped"`` from samples, and puts every record into ``batch["skipped"]``.

Why the records travel inside the batch: with DataLoader workers, ``__getitem__`` *and*
``collate_fn`` both run in worker processes, so a counter incremented there is lost. The batch
is the only thing that reaches the main process, where :meth:`SkipCounter.drain` pops the list
(before the batch goes to ``model(**batch)``) and counts and logs it exactly once per sample::

    counter = SkipCounter()
    loader = DataLoader(SkippingDataset(ds), collate_fn=SkipCollator(collate), num_workers=4)
    for batch in counter.iterate(loader):   # or counter.drain(batch) in Trainer.training_step
        ...
    print(counter.summary())
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped"

# Reasons used by omniphi's loaders (free-form strings are allowed too).
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"
MISSING_AUDIO = "missing_audio"
CORRUPT_AUDIO = "corrupt_audio"
AUDIO_TOO_LARGE = "audio_too_large"
BAD_RECORD = "bad_record"


@dataclass(frozen=True)
class Skipped:
    """A bad sample: which one, why (a short reason key) and details for the log line."""

    id: str
    reason: str
    detail: str = ""
    index: int | None = None

    def __bool__(self) -> bool:  # so `if not sample:` treats it like None
        return False


def is_skipped(item: Any) -> bool:
    return item is None or isinstance(item, Skipped)


def _as_skipped(item: Any, index: int | None = None) -> Skipped:
    if isinstance(item, Skipped):
        return item
    # A foreign dataset that returns None gives us nothing but the index to report.
    return Skipped(id=f"#{index}" if index is not None else "?", reason="unknown", index=index)


def media_skip(sample_id: str, kind: str, path: str, exc: BaseException, index: int | None = None) -> Skipped:
    """Classify an exception raised while loading ``kind`` ("image"/"audio") from ``path``."""
    from omniphi.media import MediaTooLargeError

    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        reason = f"missing_{kind}"
    elif isinstance(exc, MediaTooLargeError):
        reason = f"{kind}_too_large"
    else:  # other MediaErrors (corrupt, unsupported format) and OSErrors such as EACCES
        reason = f"corrupt_{kind}"
    detail = f"{path}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return Skipped(id=str(sample_id), reason=reason, detail=detail, index=index)


class SkipCounter:
    """Counts skipped samples by reason and keeps the first ``keep_ids`` ids of each reason.

    Logs one WARNING per distinct (id, reason) the first time it is counted, so a bad sample
    seen every epoch (or substituted twice) is logged once. Lives in the main process.
    """

    def __init__(self, keep_ids: int = 20, log: bool = True):
        self.keep_ids = keep_ids
        self.log = log
        self.counts: Counter[str] = Counter()
        self.ids: dict[str, list[str]] = {}
        self._seen: set[tuple[str, str]] = set()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, item: Any) -> None:
        s = _as_skipped(item)
        key = (s.id, s.reason)
        first = key not in self._seen
        self._seen.add(key)
        # Counted every time (an epoch that lost 3 samples to a bad file lost 3 draws),
        # but named and logged once.
        self.counts[s.reason] += 1
        kept = self.ids.setdefault(s.reason, [])
        if first and len(kept) < self.keep_ids:
            kept.append(s.id)
        if first and self.log:
            logger.warning("skipping sample %s (%s)%s", s.id, s.reason, f": {s.detail}" if s.detail else "")

    def update(self, items: Iterable[Any]) -> None:
        for item in items:
            self.add(item)

    def drain(self, batch: Any) -> Any:
        """Pop ``batch["skipped"]`` (from :class:`SkipCollator`) and count it; returns the batch."""
        if isinstance(batch, dict):
            self.update(batch.pop(SKIPPED_KEY, ()) or ())
        return batch

    def iterate(self, loader: Iterable[Any]) -> Iterator[Any]:
        for batch in loader:
            yield self.drain(batch)

    def merge(self, other: "SkipCounter") -> None:
        """Fold in a counter kept elsewhere (e.g. one per evaluation pass)."""
        self.counts.update(other.counts)
        for reason, ids in other.ids.items():
            kept = self.ids.setdefault(reason, [])
            for i in ids:
                if len(kept) < self.keep_ids and i not in kept:
                    kept.append(i)
        self._seen |= other._seen

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "ids": {k: list(v) for k, v in self.ids.items()}}

    def summary(self) -> str:
        if not self.total:
            return "skipped 0 samples"
        parts = []
        for reason, n in self.counts.most_common():
            ids = self.ids.get(reason, [])
            more = ", ..." if n > len(ids) else ""
            parts.append(f"{reason} {n} (ids: {', '.join(ids)}{more})")
        return f"skipped {self.total} samples: " + "; ".join(parts)


class SkippingDataset:
    """Map-style dataset wrapper: a bad index yields the next good sample (wrapping around).

    The substitute carries the markers of what it replaced under ``sample["skipped"]``.
    ``max_consecutive`` bad samples in a row raise: that is a broken dataset (wrong image
    folder, say), which should stop training with a clear message rather than spin.
    """

    def __init__(self, dataset: Sequence[Any], max_consecutive: int = 100):
        self.dataset = dataset
        self.max_consecutive = max_consecutive

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        if n == 0:
            raise IndexError("empty dataset")
        skipped: list[Skipped] = []
        for step in range(min(self.max_consecutive, n)):
            i = (index + step) % n
            item = self.dataset[i]
            if not is_skipped(item):
                if skipped:
                    item = dict(item)  # never mutate a sample a dataset might cache
                    # Only the requested index is reported: the bad neighbours passed on the
                    # way are reported when they are drawn themselves, so each bad sample
                    # counts once per epoch (count = draws that had to be replaced).
                    item[SKIPPED_KEY] = list(item.get(SKIPPED_KEY) or []) + skipped[:1]
                return item
            skipped.append(_as_skipped(item, i))
        reasons = Counter(s.reason for s in skipped)
        raise RuntimeError(
            f"{len(skipped)} consecutive bad samples from index {index} "
            f"({', '.join(f'{r}: {c}' for r, c in reasons.items())}); first: {skipped[0].id}: "
            f"{skipped[0].detail or skipped[0].reason}. Is the image/audio folder right?"
        )


class SkipCollator:
    """Wraps ``collate_fn``: bad items are dropped (the batch shrinks) and all skip records,
    dropped or substituted, are returned under ``batch["skipped"]`` for the main process."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None):
        self.collate_fn = collate_fn or (lambda samples: {"samples": samples})

    def __call__(self, items: list[Any]) -> Any:
        skipped: list[Skipped] = []
        good = []
        for item in items:
            if is_skipped(item):
                skipped.append(_as_skipped(item))
                continue
            if isinstance(item, Mapping) and SKIPPED_KEY in item:
                item = dict(item)
                skipped.extend(item.pop(SKIPPED_KEY) or ())
            good.append(item)
        batch = self.collate_fn(good) if good else {}
        if not isinstance(batch, dict):
            raise TypeError("SkipCollator needs a collate_fn that returns a dict (to carry 'skipped')")
        batch[SKIPPED_KEY] = skipped
        return batch
