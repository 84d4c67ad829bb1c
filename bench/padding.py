"""How much of a training recipe's compute goes to padding: each training sample encoded as the
trainer encodes it (its real token count, media tokens included), then cut into batches in a random
order (the trainer's default) and in the length-grouped order (`data.group_by_length: true`), each
batch padded to its longest sample as the collator pads it.

    .venv/bin/python bench/padding.py recipes/starter-instruct.yaml --processor-from starter

Why: a step's cost grows with batch size × the batch's longest sample, so the padded share is compute
spent on nothing. `--processor-from` names a model whose processor is the recipe base's, for when the
base (an earlier stage's output) is not built yet. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def padded_tokens(lengths: list[int], order: list[int], batch_size: int) -> int:
    """Tokens the batches of `order` hold once each is padded to its longest sample."""
    batches = (order[i:i + batch_size] for i in range(0, len(order), batch_size))
    return sum(max(lengths[k] for k in batch) * len(batch) for batch in batches)


def main() -> None:
    from omniphi.runtime.loading import load_weights
    from omniphi.train.collator import LengthGroupedSampler, estimate_lengths, training_pipeline
    from omniphi.train.data import build_splits
    from omniphi.train.recipe import load_recipe
    from omniphi.data.skipping import is_skipped

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--processor-from", help="a model with the recipe base's processor (default: the base)")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    seed = recipe.training.data_seed if recipe.training.data_seed is not None else recipe.training.seed
    processor = load_weights(args.processor_from or recipe.model.base).processor
    source, _ = build_splits(recipe.data, seed)
    dataset, _ = training_pipeline(source, processor, recipe.data.max_length)
    started = time.perf_counter()
    lengths, skipped = [], 0
    for i in range(len(dataset.dataset)):  # the encoder itself: a skipped sample is counted, not replaced
        sample = dataset.dataset[i]
        if is_skipped(sample):
            skipped += 1
            lengths.append(0)
        else:
            lengths.append(len(sample["encoded"].input_ids))
    batch = recipe.training.batch_size
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped_order = list(LengthGroupedSampler(estimate_lengths(dataset, processor.image_seq_length), batch, seed))
    real = sum(lengths)
    report = {"recipe": args.recipe, "samples": len(lengths), "skipped": skipped, "batch_size": batch,
              "real_tokens": real, "encode_seconds": round(time.perf_counter() - started, 1)}
    for name, order in (("random", random_order), ("grouped", grouped_order)):
        padded = padded_tokens(lengths, order, batch)
        report[name] = {"padded_tokens": padded, "padding_share": round(1 - real / padded, 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
