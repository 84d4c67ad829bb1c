"""Training step time: logits at target positions only (OmniForConditionalGeneration's training
forward) vs the LLM's own loss over logits at every position, on the starter, same batch, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/loss_logits.py [--reps 6]

A batch of 8 three-question dialogues about the held-out pictures in tests/fixtures/starter-shapes,
the projectors trainable (gradients flow back through the whole LLM, as in the align and instruct
stages). The two paths alternate so machine noise hits both; the medians are compared.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from omniphi.runtime.loading import load_weights

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "starter-shapes"


def dialogues(n: int) -> list:
    questions = json.loads((FIXTURE / "questions.json").read_text())["questions"]
    by_image: dict[str, list] = {}
    for q in questions:
        by_image.setdefault(q["image"], []).append(q)
    out = []
    for image, qs in list(by_image.items())[:n]:
        turns = []
        for k, q in enumerate(qs):
            content = ([{"type": "image", "image": Image.open(FIXTURE / image)}] if k == 0 else []) + [
                {"type": "text", "text": q["question"]}]
            turns += [{"role": "user", "content": content}, {"role": "assistant", "content": q["answer"].capitalize() + "."}]
        out.append(turns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    loaded = load_weights("starter-base")
    model, processor = loaded.model, loaded.processor
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    batch = processor(dialogues(8))
    targets = int((batch["labels"] != -100).sum())

    def targets_only():
        return model(**batch).loss

    def full_logits():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
        return model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    times = {"targets only": [], "all positions": []}
    losses = {}
    for rep in range(args.reps + 1):
        for name, fn in (("targets only", targets_only), ("all positions", full_logits)):
            model.zero_grad()
            start = time.perf_counter()
            loss = fn()
            loss.backward()
            elapsed = time.perf_counter() - start
            if rep:  # the first round warms up
                times[name].append(elapsed)
            losses[name] = loss.item()
    fast, full = statistics.median(times["targets only"]), statistics.median(times["all positions"])
    print(f"batch {tuple(batch['input_ids'].shape)}, {targets} target tokens; torch threads {torch.get_num_threads()}")
    for name in times:
        print(f"{name:14s} median {statistics.median(times[name]):.3f} s/step over {args.reps} (loss {losses[name]:.6f})")
    print(f"speed-up {full / fast:.2f}×")


if __name__ == "__main__":
    main()
