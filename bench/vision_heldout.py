"""How well vision-step outputs (the starter build's runs/starter/vision, or any pretrain_vision output)
name shapes in colour-shape pairs they never saw, on pictures drawn fresh for this check, which no
training or setting has looked at: shape accuracy of the tower's words on held-out pairs and on seen
pairs, each output on the same pictures.

    .venv/bin/python bench/vision_heldout.py runs/starter/vision
    .venv/bin/python bench/vision_heldout.py OLD_VISION_OUTPUT runs/starter/vision --scenes 1000

The held-out pairs are those of the shapes data the outputs were trained on (--data-seed, the
starter's is 0); half the pictures hold at least one of them.
"""

from __future__ import annotations

import argparse
import json
import random

from omniphi.data.shapes import heldout_pairs, render_scene, sample_scene
from omniphi.runtime.loading import load_weights
from omniphi.starter.vision import WordHead, shape_accuracy_by_pair


def fresh_scenes(n: int, held: set[tuple[str, str]], data_seed: int, image_size: int) -> list:
    items = []
    for i in range(n):
        rng = random.Random(f"bench-vision-heldout:{data_seed}:{i}")
        objects = sample_scene(rng, held, allow_heldout=True, force_heldout=i % 2 == 0)
        items.append((render_scene(objects, image_size, rng), [o.as_dict() for o in objects]))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="+", help="vision-step output directories (or any model with the starter's tower)")
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--data-seed", type=int, default=0, help="the seed of the shapes data they were trained on")
    parser.add_argument("--image-size", type=int, default=224, help="the size `omniphi data shapes` drew at")
    args = parser.parse_args()
    held = set(heldout_pairs(args.data_seed))
    items = fresh_scenes(args.scenes, held, args.data_seed, args.image_size)
    for output in args.outputs:
        loaded = load_weights(output)
        model = loaded.model.eval()
        # Only the argmax over each group's cosines is read, so the head's untrained scale does not matter.
        head = WordHead(model.language_model, loaded.processor.tokenizer)
        accuracy = shape_accuracy_by_pair(model, head, items, held, loaded.processor)
        print(json.dumps({"output": output, "scenes": args.scenes,
                          "heldout_shape_accuracy": round(accuracy["heldout"], 4),
                          "seen_shape_accuracy": round(accuracy["seen"], 4)}), flush=True)


if __name__ == "__main__":
    main()
