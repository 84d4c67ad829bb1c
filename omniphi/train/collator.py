"""Samples → padded training batches, with bad samples dropped and counted, never silently trained.

Pipeline (everything before the model runs in DataLoader workers when num_workers > 0):

    source dataset            {"id", "messages"} / {"id", "text"}, or a Skipped marker (missing image, ...)
    → EncodingDataset          tokenised: labels on assistant answers + EOS; a sample that cannot be cut to
                               max_length without cutting through an <image>/<audio> placeholder, or whose
                               answer lost its tokens, becomes Skipped("too_long" / "label_mismatch")
    → SkippingDataset          (omniphi.data.skipping) a bad index yields the next good sample, so batches
                               keep their size (DDP ranks stay in step, no empty batch)
    → TrainCollator            dynamic padding to the longest sample; attention mask from the lengths
                               (never from the pad id: pad = eos for Phi-2); skip records ride in
                               batch["skipped"] to the main process, where the trainer counts them.

`LengthGroupedSampler` groups samples of similar length (less padding) from cheap length estimates and
a seeded permutation, so a resumed run sees the same order.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch

from omniphi.data.skipping import SKIPPED_KEY, SkipCollator, Skipped, SkippingDataset, is_skipped
from omniphi.processing import IGNORE_INDEX, EncodedSample, LabelMaskError, OmniProcessor, SampleTooLongError
from omniphi.train.distill import DISTILL_KEY, DistillMarked, DistillMediaError

TOO_LONG = "too_long"
LABEL_MISMATCH = "label_mismatch"
BAD_SAMPLE = "bad_sample"


def encode_text(processor: OmniProcessor, text: str, max_length: int) -> EncodedSample:
    """Plain text for continued LM training: every token trained, EOS appended so the model learns
    where a document ends. No media, so cutting at max_length cannot hit a placeholder."""
    tokenizer = processor.tokenizer
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]  # BOS only where the tokenizer adds one
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    ids = ids[:max_length]
    tensor = torch.tensor(ids, dtype=torch.long)
    size = processor.config.image_size or 1
    return EncodedSample(input_ids=tensor, labels=tensor.clone(), pixel_values=torch.zeros(0, 3, size, size))


class EncodingDataset:
    """Wraps a source dataset; `__getitem__` returns {"id", "encoded": EncodedSample} or a Skipped."""

    def __init__(self, source: Sequence[Any], processor: OmniProcessor, max_length: int):
        self.source = source
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        item = self.source[index]
        if is_skipped(item):
            return item
        sample_id = str(item.get("id", index))
        try:
            if "messages" in item:
                encoded = self.processor.encode(item["messages"], max_length=self.max_length)
            elif "text" in item:
                encoded = encode_text(self.processor, item["text"], self.max_length)
            else:
                return Skipped(sample_id, BAD_SAMPLE, "neither 'messages' nor 'text'", index)
        except SampleTooLongError as error:
            return Skipped(sample_id, TOO_LONG, str(error), index)
        except LabelMaskError as error:
            return Skipped(sample_id, LABEL_MISMATCH, str(error), index)
        except ValueError as error:  # e.g. placeholder count ≠ media count in a hand-written record
            return Skipped(sample_id, BAD_SAMPLE, str(error), index)
        if encoded.labels is not None and not bool((encoded.labels != IGNORE_INDEX).any()):
            return Skipped(sample_id, LABEL_MISMATCH, "no trained token", index)
        distill = bool(item.get(DISTILL_KEY, False))
        if distill and (encoded.pixel_values.shape[0] or encoded.audio_windows):
            # a recipe mistake, not a bad sample: stop the run rather than skip the whole source
            raise DistillMediaError(f"sample {sample_id} of a distill source has an image or audio; "
                                    "distill takes text-only samples")
        return {"id": sample_id, "encoded": encoded, DISTILL_KEY: distill}


class TrainCollator:
    """Pads a list of encoded samples (processor.collate: mask from lengths, labels -100 on padding)."""

    def __init__(self, processor: OmniProcessor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor.collate([item["encoded"] for item in items], padding_side="right")
        if any(item.get(DISTILL_KEY) for item in items):  # only then: the model never sees the key
            batch[DISTILL_KEY] = torch.tensor([bool(item.get(DISTILL_KEY)) for item in items])
        return batch


def training_pipeline(source: Sequence[Any], processor: OmniProcessor, max_length: int,
                      max_consecutive_bad: int = 100) -> tuple[SkippingDataset, SkipCollator]:
    """(dataset, collate_fn) for a DataLoader/Trainer; batches carry skip records under "skipped"."""
    dataset = SkippingDataset(EncodingDataset(source, processor, max_length), max_consecutive=max_consecutive_bad)
    return dataset, SkipCollator(TrainCollator(processor))


def pop_skipped(batch: dict) -> list:
    return batch.pop(SKIPPED_KEY, None) or []


def pop_distill_rows(batch: dict) -> torch.Tensor | None:
    """The batch's per-row distill flags (None when no row is marked), taken out of the model's inputs."""
    return batch.pop(DISTILL_KEY, None)


# -- length grouping ----------------------------------------------------------------------------------------
def estimate_lengths(dataset: Any, image_tokens: int, audio_tokens: int = 100) -> list[int]:
    """Cheap token-count estimates (no media decoded, nothing tokenised) for grouping by length.

    Knows omniphi's loaders and the wrappers around them; anything else gets equal lengths (no grouping)."""
    from torch.utils.data import ConcatDataset, Subset

    from omniphi.data.llava import LlavaDataset
    from omniphi.data.speech import AsrDataset
    from omniphi.data.text import TextDataset

    if isinstance(dataset, (SkippingDataset, DistillMarked)):
        return estimate_lengths(dataset.dataset, image_tokens, audio_tokens)
    if isinstance(dataset, EncodingDataset):
        return estimate_lengths(dataset.source, image_tokens, audio_tokens)
    if isinstance(dataset, Subset):
        inner = estimate_lengths(dataset.dataset, image_tokens, audio_tokens)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [n for part in dataset.datasets for n in estimate_lengths(part, image_tokens, audio_tokens)]
    if isinstance(dataset, LlavaDataset):
        lengths = []
        for i in range(len(dataset)):
            raw = dataset.records.raw(i)
            # ~4 bytes per token for English text; each placeholder becomes its feature tokens.
            n_images = raw.count(b"<image>") or (1 if b'"image"' in raw else 0)
            lengths.append(len(raw) // 4 + n_images * image_tokens + raw.count(b"<audio>") * audio_tokens)
        return lengths
    if isinstance(dataset, TextDataset):
        return [int(n) // 4 for n in (dataset._end - dataset._start)]
    if isinstance(dataset, AsrDataset):
        return [len(t) // 4 + audio_tokens + _audio_estimate(p, audio_tokens) for t, p in zip(dataset.texts, dataset.paths)]
    return [1] * len(dataset)


def _audio_estimate(path: str, default: int) -> int:
    """~6.25 audio tokens per second; FLAC speech is ~40 kB/s, WAV 16-bit 16 kHz 32 kB/s."""
    try:
        return int(os.path.getsize(path) / 32_000 * 6.25)
    except OSError:
        return default


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Like transformers' LengthGroupedSampler (shuffle, cut into mega-batches of 50 batches, sort
    each by length, longest batch first so an out-of-memory shows at once), with two differences:

    - The batches are shuffled after grouping. transformers' sampler yields each mega-batch longest
      to shortest, so every 50 steps training sweeps from the long texts down to the one-word answers
      and ends each sweep on one kind of sample; the starter's instruct step trained that way lost
      its honest answer to pictures outside the shapes world.
    - The permutations come from (seed, epoch) rather than the global RNG: a resumed run skips into
      the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batch_mult: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(1, batch_size * mega_batch_mult)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        groups = [sorted(order[i : i + self.mega], key=lambda k: -self.lengths[k]) for i in range(0, len(order), self.mega)]
        batches = [g[i : i + self.batch_size] for g in groups for i in range(0, len(g), self.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[k] for k in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return iter([k for b in batches for k in b])
