"""Pictures from outside the coloured-shapes world, each asked a question a user might ask, and
answered with one honest sentence (shapes.OUT_OF_WORLD_ANSWER): a model trained only on shapes
scenes must say so rather than name a shape in a portrait ("Triangle.") or a colour in noise.

Two sources, both offline:
- photos: the ones scikit-image ships (astronaut, chelsea the cat, coffee, rocket, …), randomly
  cropped, mirrored and colour-jittered; the photos of the held-out split are never in training;
- drawings made here: colour noise, gradients, clip-art-like piles of polygons and ellipses in
  any colour on a coloured ground, and lines of text — each unlike a shapes scene (1-3 shapes of
  six colours on a pale ground) in a way a user's picture would be.

``write_outside(root, n_train, n_test, seed)`` writes ``root/outside/images/*.png``,
``outside_train.json`` (LLaVA records, the picture before or after the question) and
``outside_test.jsonl`` (`omniphi eval --task qa` items whose reference is the sentence's core, so
the eval's accuracy is the honest-sentence rate on held-out pictures).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omniphi.data.shapes import COLOURS, OUT_OF_WORLD_ANSWER, POSITIONS, SHAPES

# What the eval looks for in an answer (whole words, normalised): the sentence's claim.
HONEST_CORE = "trained only on pictures of coloured shapes"
IMAGE_SIZE = 224
# scikit-image's bundled photos (no download), split once: the test photos never train.
TRAIN_PHOTOS = ("chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry", "moon", "coins",
                "brick", "grass", "gravel", "page", "retina")
TEST_PHOTOS = ("astronaut", "coffee", "horse", "clock", "colorwheel", "text", "logo")
GENERAL_QUESTIONS = ("What is in this picture?", "Describe this image.", "What do you see?",
                     "What is this a photo of?", "What colour is this?", "What is shown here?")


def _photo(name: str, rng: random.Random) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    image = Image.fromarray(array).convert("RGB")
    w, h = image.size
    scale = rng.uniform(0.5, 1.0)  # a random crop of half to all of the shorter side
    side = int(min(w, h) * scale)
    left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    image = image.crop((left, top, left + side, top + side)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    jitter = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
    return Image.fromarray(np.clip(np.asarray(image, np.float32) * jitter, 0, 255).astype(np.uint8))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))


def _noise(rng: random.Random) -> Image.Image:
    generator = np.random.default_rng(rng.getrandbits(32))
    size = rng.choice((4, 8, 16, 32, IMAGE_SIZE))  # blocky to fine
    array = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if rng.random() < 0.3:
        array[..., :] = array[..., :1]  # grey noise
    return Image.fromarray(array).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR)


def _gradient(rng: random.Random) -> Image.Image:
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / (IMAGE_SIZE - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xs + np.sin(angle) * ys)
    else:
        cx, cy = rng.random(), rng.random()
        t = np.hypot(xs - cx, ys - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))


def _clip_art(rng: random.Random) -> Image.Image:
    """Many overlapping polygons, ellipses and thick lines in any colour on a coloured ground."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(6, 18)):
        kind = rng.random()
        box = sorted(rng.sample(range(-20, IMAGE_SIZE + 20), 2)), sorted(rng.sample(range(-20, IMAGE_SIZE + 20), 2))
        if kind < 0.4:
            points = [(rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE)) for _ in range(rng.randint(3, 9))]
            draw.polygon(points, fill=_colour(rng), outline=_colour(rng) if rng.random() < 0.5 else None)
        elif kind < 0.75:
            draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=_colour(rng))
        else:
            draw.line([(rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE)) for _ in range(rng.randint(2, 5))],
                      fill=_colour(rng), width=rng.randint(3, 14))
    return image


_WORDS = ("hello", "omniphi", "menu", "open", "sale", "coffee", "42", "exit", "north", "welcome", "stop",
          "shapes", "circle", "data", "garden", "2024", "ticket", "Paris", "notes", "total")


def _text(rng: random.Random) -> Image.Image:
    background, ink = _colour(rng), _colour(rng)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    y = rng.randint(4, 40)
    while y < IMAGE_SIZE - 20:
        size = rng.randint(14, 40)
        font = ImageFont.load_default(size=size)
        draw.text((rng.randint(2, 40), y), " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4))),
                  fill=ink, font=font)
        y += size + rng.randint(4, 24)
    return image


DRAWINGS: dict[str, Callable[[random.Random], Image.Image]] = {
    "noise": _noise, "gradient": _gradient, "clip-art": _clip_art, "text": _text}


def outside_picture(kind: str, rng: random.Random, photos: tuple[str, ...]) -> Image.Image:
    if kind == "photo":
        return _photo(rng.choice(photos), rng)
    return DRAWINGS[kind](rng)


def outside_question(rng: random.Random) -> str:
    """A question a user of the shapes model might ask of any picture: half of them shapes
    questions (their words must not make the model answer as if it saw shapes)."""
    if rng.random() < 0.5:
        return rng.choice(GENERAL_QUESTIONS)
    colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(POSITIONS))
    return rng.choice((f"What colour is the {shape}?", "How many shapes are there?", f"Where is the {colour} {shape}?",
                       f"Is there a {colour} {shape}?", f"What shape is on the {position}?"))


KINDS = ("photo", "photo", *DRAWINGS)  # a third photos, two thirds drawings


def write_outside(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, int]:
    """Write the pictures and their questions (see the module docstring). Returns the counts."""
    root = Path(root)
    images = root / "outside" / "images"
    images.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for split, n, photos, records in (("train", n_train, TRAIN_PHOTOS, train), ("test", n_test, TEST_PHOTOS, test)):
        for i in range(n):
            rng = random.Random(f"outside:{seed}:{split}:{i}")
            kind = KINDS[i % len(KINDS)]
            rel = f"outside/images/{split}-{i:05d}.png"
            outside_picture(kind, rng, photos).save(root / rel, format="PNG", compress_level=6)
            question = outside_question(rng)
            if split == "test":
                records.append({"id": f"outside-{split}-{i}", "question": question, "answers": [HONEST_CORE],
                                "image": rel, "kind": kind})
                continue
            human = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
            records.append({"id": f"outside-{split}-{i}", "image": rel, "kind": kind, "conversations": [
                {"from": "human", "value": human}, {"from": "gpt", "value": OUT_OF_WORLD_ANSWER}]})
    (root / "outside_train.json").write_text(json.dumps(train, indent=1) + "\n")
    (root / "outside_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return {"train": len(train), "test": len(test)}
