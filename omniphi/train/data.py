"""Recipe data sources → the data engineer's loaders (omniphi.data), concatenated, limited, split."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset, Subset

from omniphi.train.distill import DistillMarked
from omniphi.train.recipe import DataSection, DataSource, RecipeError


def open_source(source: DataSource):
    """One recipe data source as a map-style dataset of {"id", "messages"} / {"id", "text"} samples."""
    from omniphi.data.llava import DataFileError, LlavaDataset
    from omniphi.data.speech import AsrManifestDataset, LibriSpeechDataset
    from omniphi.data.text import TextDataset

    try:
        if source.format in ("llava", "llava_plain"):
            dataset = LlavaDataset(
                source.path, image_folder=source.image_folder, audio_folder=source.audio_folder,
                mode="plain" if source.format == "llava_plain" else "conversation",
            )
        elif source.format == "asr_manifest":
            dataset = AsrManifestDataset(source.path, prompt=source.prompt)
        elif source.format == "librispeech":
            dataset = LibriSpeechDataset(source.path, prompt=source.prompt)
        elif source.format == "text":
            dataset = TextDataset(source.path, split=source.text_split, separator=source.separator)
        else:  # the recipe's Literal type already refuses others
            raise RecipeError(f"unknown data format {source.format!r}")
    except DataFileError as error:
        raise RecipeError(f"data source {source.path}: {error}") from None
    if len(dataset) == 0:
        raise RecipeError(f"data source {source.path} has no samples")
    if source.limit is not None:
        dataset = Subset(dataset, range(min(source.limit, len(dataset))))
    return DistillMarked(dataset) if source.distill else dataset


def _concat(datasets: list) -> Any:
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def build_splits(section: DataSection, seed: int) -> tuple[Sequence[Any], Sequence[Any] | None]:
    """(train, eval) source datasets. Without eval sources, `eval_fraction` of train is held out by
    a seeded permutation, so the split is the same on every rank and on resume."""
    train = _concat([open_source(s) for s in section.train])
    if section.eval:
        return train, _concat([open_source(s) for s in section.eval])
    if section.eval_fraction > 0:
        n = len(train)
        n_eval = max(1, int(round(n * section.eval_fraction)))
        if n_eval >= n:
            raise RecipeError("data.eval_fraction leaves no training samples")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        return Subset(train, sorted(order[n_eval:])), Subset(train, sorted(order[:n_eval]))
    return train, None
