"""Stage 1 of the starter model: teach its vision tower and projector to see shapes scenes and to say
what they see in SmolLM2's own word space, before any stage runs the LLM.

Why a stage of its own: the starter's tower starts random (no pretrained CLIP is available offline),
and a pass through the 135M LLM is ~100× dearer per image than one through the tower, so the LLM
stages see only a few thousand samples in `make starter`'s hour: too few to learn to find an object
among image tokens unlike anything the LLM has read. Here, without the LLM, the scene labels the data
already has go in directly.

The 25 image tokens are trained to *read like a caption*: row r of the 5 × 5 grid describes the
r-th region in reading order (top, left, centre, right, bottom), one word per token::

    top red hexagon two ,  left empty empty two ,  centre blue circle two ,  ...

Each token, after the projector, is pulled onto SmolLM2's input embedding of its word (cosine
alignment, plus a cosine softmax against the other words of its group so the words stay apart,
plus a norm penalty so it is as long as a word embedding). The tower's attention moves each
region's look into its row. Separate words in a fixed order, rather than a region's words
superposed on one token, make answering reading: "What colour is the hexagon?" asks for the word
before "hexagon", which the LLM's existing circuits for matching and copying words do, where a
superposed token would make it pull a colour out of a mixture (the README's build history has what
each layout measured). The projector stays the standard mlp2x_gelu (export to llava-hf is
unaffected); only its starting point is better.

Colour and shape are separate targets, but the training pictures still link them: each shape is
missing in one colour (the held-out pairs the test split asks about), so "round and yellow" always
means circle, and a tower trained plainly reads a yellow hexagon as a circle. Two things keep shape apart
from colour. The shape words are learnt against a colour-only model (a product of experts: how much
likelier or rarer each shape is in each colour, over the training set, is added to the shape logits,
so the tower gains nothing by learning it), and half the drawn scenes are painted in random colours
off the palette.

The output is a training output (`omniphi_trained.json` + the tower's and projector's weights) on
the base model, so the next stage's recipe names it as its `model.base` like any other stage.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from omniphi.data.shapes import CAPTION_ORDER, COLOURS, NUMBER_WORDS, POSITIONS, SHAPES
from omniphi.train.word_space import WordSpace

IGNORE = -100
# The words each group of targets points at ("empty" stands for no object in the region).
WORDS = {
    "colour": ("empty", *COLOURS),
    "shape": ("empty", *SHAPES),
    "position": tuple(POSITIONS),
    "count": tuple(NUMBER_WORDS[n] for n in sorted(NUMBER_WORDS)),
    "separator": (",",),
}
# One row of the token grid per region; the group each token of a row names.
ROW_SLOTS = ("position", "colour", "shape", "count", "separator")
NORM_WEIGHT = 0.1


@dataclass
class VisionPretrainSettings:
    epochs: int = 15  # once colour no longer tells the shape, shape accuracy rises until ~epoch 14 (README)
    # Learn the shape words against a colour-only model (the module's docstring; WordHead.loss's shape_bias).
    debias_colour: bool = True
    # Scenes drawn for this stage on top of the dataset's training images (same generator, own seed,
    # never a held-out colour-shape pair): the tower is data-hungry and drawing is cheap (~7 ms each).
    extra_scenes: int = 10_000
    # The share of those drawn scenes painted in random colours off the palette, their colour targets
    # ignored: shapes in colours that say nothing of them.
    recoloured_fraction: float = 0.5
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    seed: int = 0


class WordHead(WordSpace):
    """Cosines of the projected image tokens to the LLM's embeddings of each group's words."""

    def __init__(self, language_model, tokenizer):
        super().__init__(language_model)
        table = language_model.get_input_embeddings().weight.detach()
        for group, words in WORDS.items():
            rows = [table[tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(0) for w in words]
            self.register_buffer(group, nn.functional.normalize(torch.stack(rows).float(), dim=-1))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """group → [batch, tokens, words of the group] cosines."""
        unit = nn.functional.normalize(tokens.float(), dim=-1)
        return {group: unit @ getattr(self, group).T for group in WORDS}

    def loss(self, cosines: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
             shape_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Per group, over the tokens that name it: softmax cross-entropy (the right word beats the
        group's others) + 1 − cosine to the right word (the token *is* that word, as the LLM reads it).
        `shape_bias` ([batch, tokens, shape words], from `colour_shape_bias`) is added to the shape
        logits of the cross-entropy only: a product of experts with a colour-only model, so the tower
        is never rewarded for learning which shapes each colour comes in."""
        scale = self.scale()
        total = 0.0
        for group, cos in cosines.items():
            named = targets[group] != IGNORE
            logits = scale * cos
            if group == "shape" and shape_bias is not None:
                logits = logits + shape_bias
            cos, logits, target = cos[named], logits[named], targets[group][named]
            total = total + nn.functional.cross_entropy(logits, target)
            total = total + (1 - cos.gather(1, target[:, None])).mean()
        return total


def colour_shape_log_ratio(scenes: list[list[dict]]) -> torch.Tensor:
    """[colour words, shape words]: log P(shape | colour) − log P(shape) over the palette-coloured
    objects of `scenes` (add-one smoothed): what an object's colour tells of its shape beyond how
    common each shape is. In the training split each colour lacks its held-out shape: a strongly
    negative entry; the other entries are near zero. Zero for the word "empty" and for the "empty"
    colour: empty against occupied is the tower's to learn."""
    counts = torch.ones(len(WORDS["colour"]) - 1, len(WORDS["shape"]) - 1)
    for scene in scenes:
        for obj in scene:
            if obj["colour"] is not None:
                counts[WORDS["colour"].index(obj["colour"]) - 1, WORDS["shape"].index(obj["shape"]) - 1] += 1
    ratio = torch.zeros(len(WORDS["colour"]), len(WORDS["shape"]))
    ratio[1:, 1:] = ((counts / counts.sum(1, keepdim=True)) / (counts.sum(0) / counts.sum())).log()
    return ratio


def colour_shape_bias(targets: dict[str, torch.Tensor], log_ratio: torch.Tensor, grid: int) -> torch.Tensor:
    """[batch, tokens, shape words]: at each shape token, `log_ratio`'s row for the colour its region
    names (zeros where it names none, and at the other tokens)."""
    layout = token_layout(grid)
    batch, tokens = targets["shape"].shape
    bias = torch.zeros(batch, tokens, log_ratio.shape[1])
    for region in CAPTION_ORDER:
        colour = targets["colour"][:, layout[(region, "colour")]]
        known = colour != IGNORE
        bias[known, layout[(region, "shape")]] = log_ratio[colour[known]]
    return bias


def token_layout(grid: int) -> dict[tuple[str, str], int]:
    """(region, group) → token index (row-major, as CLIP flattens its patch grid): row r of the
    first len(CAPTION_ORDER) rows describes region CAPTION_ORDER[r], one ROW_SLOTS word per token."""
    if grid < len(ROW_SLOTS):
        raise ValueError(f"a {grid}×{grid} patch grid has too few tokens per row for the caption layout; "
                         f"use a grid of {len(ROW_SLOTS)} or more")
    return {(region, group): row * grid + column
            for row, region in enumerate(CAPTION_ORDER) for column, group in enumerate(ROW_SLOTS)}


def scene_targets(scene: list[dict], grid: int) -> dict[str, torch.Tensor]:
    """Per-token class ids for one image, per group (IGNORE where a token names another group)."""
    targets = {group: torch.full((grid * grid,), IGNORE, dtype=torch.long) for group in WORDS}
    by_region = {o["position"]: o for o in scene}
    for (region, group), index in token_layout(grid).items():
        obj = by_region.get(region)
        if group == "colour":
            if obj and obj["colour"] is None:  # painted off the palette: no colour word to name
                continue
            word = obj["colour"] if obj else "empty"
        elif group == "shape":
            word = obj["shape"] if obj else "empty"
        elif group == "position":
            word = region
        elif group == "count":
            word = NUMBER_WORDS[len(scene)]
        else:
            word = ","
        targets[group][index] = WORDS[group].index(word)
    return targets


def mirrored(scene: list[dict]) -> list[dict]:
    """The scene of the horizontally flipped picture: left and right swap (every shape in the data
    is symmetric about its vertical axis, up to its small random tilt, so shapes keep their names)."""
    swap = {"left": "right", "right": "left"}
    return [{**o, "position": swap.get(o["position"], o["position"])} for o in scene]


def read_scenes(root: Path, split: str) -> list[tuple[Path, list[dict]]]:
    """(image path, scene) for each image of a split, from the question records that carry the scene."""
    records = json.loads((root / f"{split}.json").read_text(encoding="utf-8"))
    scenes: dict[str, list[dict]] = {}
    for record in records:
        scenes.setdefault(record["image"], record["scene"])
    return [(root / image, scene) for image, scene in sorted(scenes.items())]


# How far (Euclidean, in RGB) an off-palette fill stays from the palette colour of its shape's held-out
# pair, so that a recoloured scene never shows a held-out pair under another name.
HELDOUT_COLOUR_MARGIN = 90.0


def off_palette_fill(rng: random.Random, avoid: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """A random colour of any hue, from pale and washed out to deep, at least HELDOUT_COLOUR_MARGIN
    from each colour in `avoid`."""
    while True:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 1.0), rng.uniform(0.3, 1.0))
        fill = tuple(round(255 * c) for c in rgb)
        if all(math.dist(fill, other) >= HELDOUT_COLOUR_MARGIN for other in avoid):
            return fill


def drawn_scenes(n: int, seed: int, image_size: int,
                 recoloured_fraction: float = 0.0) -> list[tuple[Image.Image, list[dict]]]:
    """`n` new scenes from the shapes generator (training-split rules: no held-out pair), the last
    `recoloured_fraction` of them painted off the palette (colour None in their scene)."""
    from omniphi.data.shapes import heldout_pairs, render_scene, sample_scene

    held = set(heldout_pairs(seed))
    held_colours = {shape: [COLOURS[c] for c, s in held if s == shape] for shape in SHAPES}
    recoloured_from = n - round(n * recoloured_fraction)
    out = []
    for i in range(n):
        rng = random.Random(f"starter-vision-scene:{seed}:{i}")
        objects = sample_scene(rng, held, allow_heldout=False, force_heldout=False)
        scene = [o.as_dict() for o in objects]
        fills = None
        if i >= recoloured_from:
            paint = random.Random(f"starter-vision-fill:{seed}:{i}")
            fills = [off_palette_fill(paint, held_colours[o.shape]) for o in objects]
            scene = [{**o, "colour": None} for o in scene]
        out.append((render_scene(objects, image_size, rng, fills), scene))
    return out


def _stacked_targets(scenes: list[list[dict]], grid: int) -> dict[str, torch.Tensor]:
    per_scene = [scene_targets(scene, grid) for scene in scenes]
    return {group: torch.stack([t[group] for t in per_scene]) for group in WORDS}


def _tensors(items, processor, grid: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pixels = []
    for source, _ in items:
        if isinstance(source, Image.Image):
            pixels.append(processor.preprocess_image(source))
        else:
            with Image.open(source) as image:
                pixels.append(processor.preprocess_image(image))
    return torch.stack(pixels), _stacked_targets([scene for _, scene in items], grid)


@torch.no_grad()
def scene_accuracy(model, head: WordHead, pixels: torch.Tensor, targets: dict[str, torch.Tensor],
                   batch_size: int = 128) -> dict[str, float]:
    """Colour and shape accuracy over the regions that hold an object, "empty" over the regions
    that do not (both words "empty"), position over all regions, count over images (the count
    tokens' average vote), "scene": colours, shapes and count of one image all right, and
    "cosine": the mean cosine of the named tokens to their word (1 = the word's own direction)."""
    grid = math.isqrt(targets["colour"].shape[1])
    layout = token_layout(grid)
    colour_at = [layout[(region, "colour")] for region in CAPTION_ORDER]
    shape_at = [layout[(region, "shape")] for region in CAPTION_ORDER]
    right = {"colour": 0, "shape": 0, "empty": 0, "position": 0, "count": 0, "scene": 0}
    cosine_sum, named = 0.0, 0
    occupied = targets["colour"][:, colour_at] != WORDS["colour"].index("empty")
    for start in range(0, len(pixels), batch_size):
        cosines = head(model.get_image_features(pixels[start:start + batch_size]))
        batch = {k: v[start:start + batch_size] for k, v in targets.items()}
        here = occupied[start:start + batch_size]
        said = {group: cos.argmax(-1) for group, cos in cosines.items()}
        colour_ok = (said["colour"] == batch["colour"])[:, colour_at]
        shape_ok = (said["shape"] == batch["shape"])[:, shape_at]
        counted = batch["count"] != IGNORE
        votes = (cosines["count"].softmax(-1) * counted[..., None]).sum(1)
        count_ok = votes.argmax(-1) == batch["count"].max(1).values
        placed = batch["position"] != IGNORE
        right["colour"] += int(colour_ok[here].sum())
        right["shape"] += int(shape_ok[here].sum())
        right["empty"] += int((colour_ok & shape_ok)[~here].sum())
        right["position"] += int((said["position"] == batch["position"])[placed].sum())
        right["count"] += int(count_ok.sum())
        right["scene"] += int((colour_ok.all(1) & shape_ok.all(1) & count_ok).sum())
        for group, cos in cosines.items():
            mask = batch[group] != IGNORE
            cosine_sum += float(cos[mask].gather(1, batch[group][mask][:, None]).sum())
            named += int(mask.sum())
    n, objects = len(pixels), int(occupied.sum())
    return {"colour": right["colour"] / objects, "shape": right["shape"] / objects,
            "empty": right["empty"] / max(1, occupied.numel() - objects),
            "position": right["position"] / occupied.numel(),
            "count": right["count"] / n, "scene": right["scene"] / n, "cosine": cosine_sum / named}


@torch.no_grad()
def shape_accuracy_by_pair(model, head: WordHead, items, heldout: set[tuple[str, str]], processor,
                           batch_size: int = 128) -> dict[str, float]:
    """Shape accuracy of the tower's words over the objects of `items` (image, scene), apart for
    objects in a held-out (colour, shape) pair and the others: whether the tower knows shapes apart
    from their colours, which the validation split (no held-out pair) cannot show."""
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    layout = token_layout(grid)
    right = {"heldout": 0, "seen": 0}
    total = {"heldout": 0, "seen": 0}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        pixels, _ = _tensors(chunk, processor, grid)
        said = head(model.get_image_features(pixels))["shape"].argmax(-1)
        for row, (_, scene) in enumerate(chunk):
            for obj in scene:
                kind = "heldout" if (obj["colour"], obj["shape"]) in heldout else "seen"
                total[kind] += 1
                right[kind] += int(said[row, layout[(obj["position"], "shape")]] == WORDS["shape"].index(obj["shape"]))
    return {kind: right[kind] / max(1, total[kind]) for kind in total}


def pretrain_vision(shapes_dir: str | Path, output_dir: str | Path, base: str = "starter-base",
                    settings: VisionPretrainSettings | None = None) -> dict[str, float]:
    """Train `base`'s vision tower on the scenes of `shapes_dir` (train split; val for the report)
    and write a training output to `output_dir`. Returns the validation accuracies."""
    from transformers import get_cosine_schedule_with_warmup

    from omniphi.runtime.loading import load_weights
    from omniphi.train.outputs import base_fingerprint, base_record, save_trained

    settings = settings or VisionPretrainSettings()
    shapes_dir, output_dir = Path(shapes_dir), Path(output_dir)
    torch.manual_seed(settings.seed)
    loaded = load_weights(base)
    model, processor = loaded.model, loaded.processor
    fingerprint = base_fingerprint(model)
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = [model.vision_tower, model.multi_modal_projector]
    for module in trained:
        module.requires_grad_(True).train()
    head = WordHead(model.language_model, processor.tokenizer)

    started = time.monotonic()
    dataset_meta = json.loads((shapes_dir / "metadata.json").read_text())
    train_items = read_scenes(shapes_dir, "train") + drawn_scenes(
        settings.extra_scenes, dataset_meta["seed"], dataset_meta["image_size"], settings.recoloured_fraction)
    train_pixels, train_targets = _tensors(train_items, processor, grid)
    # Half of each batch is seen mirrored (targets precomputed for both): twice the scenes for free.
    mirror_targets = _stacked_targets([mirrored(scene) for _, scene in train_items], grid)
    val_pixels, val_targets = _tensors(read_scenes(shapes_dir, "val"), processor, grid)
    print(f"[vision] {len(train_pixels)} training images ({settings.extra_scenes} drawn for this stage, "
          f"{settings.recoloured_fraction:.0%} of them off the palette), "
          f"{len(val_pixels)} validation; "
          f"read in {time.monotonic() - started:.0f} s", file=sys.stderr)

    colour_log_ratio = colour_shape_log_ratio([scene for _, scene in train_items])
    params = [p for module in trained for p in module.parameters()] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_pixels) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(total * settings.warmup_ratio), total)
    order = random.Random(settings.seed)
    flips = torch.Generator().manual_seed(settings.seed)
    for epoch in range(settings.epochs):
        indices = list(range(len(train_pixels)))
        order.shuffle(indices)
        running = 0.0
        for start in range(0, len(indices), settings.batch_size):
            batch = torch.tensor(indices[start:start + settings.batch_size])
            flip = torch.rand(len(batch), generator=flips) < 0.5
            pixels = torch.where(flip[:, None, None, None], train_pixels[batch].flip(-1), train_pixels[batch])
            targets = {k: torch.where(flip[:, None], mirror_targets[k][batch], v[batch]) for k, v in train_targets.items()}
            tokens = model.get_image_features(pixels)
            bias = colour_shape_bias(targets, colour_log_ratio, grid) if settings.debias_colour else None
            loss = head.loss(head(tokens), targets, bias) + NORM_WEIGHT * head.norm_penalty(tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(batch)
        for module in trained:
            module.eval()
        accuracy = scene_accuracy(model, head, val_pixels, val_targets)
        for module in trained:
            module.train()
        print(f"[vision] epoch {epoch + 1}/{settings.epochs}: train loss {running / len(indices):.4f}, val "
              + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())
              + f" ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    for module in trained:
        module.eval()
    by_pair = {}
    if (shapes_dir / "test.json").is_file():  # a report only: nothing above looked at the test split
        from omniphi.data.shapes import heldout_pairs

        by_pair = shape_accuracy_by_pair(model, head, read_scenes(shapes_dir, "test"),
                                         set(heldout_pairs(dataset_meta["seed"])), processor)
        print(f"[vision] test split, shape accuracy: held-out colour-shape pairs {by_pair['heldout']:.1%}, "
              f"seen pairs {by_pair['seen']:.1%}", file=sys.stderr)
    meta = {
        **base_record(base, output_dir),
        "base_fingerprint": fingerprint,
        "stage": "vision",
        "init": "pretrained",
        "quantization": None,
        "lora": None,
        "train_modules": ["vision_tower", "multi_modal_projector"],
        "recipe_name": "starter-vision",
        "settings": asdict(settings),
        "eval": {**{f"val_{k}_accuracy": v for k, v in accuracy.items()},
                 **{f"test_{k}_shape_accuracy": v for k, v in by_pair.items()}},
    }
    save_trained(model, output_dir, meta)
    return accuracy
