"""A synthetic "coloured shapes" dataset: small enough to train on a CPU, with answers that are
exactly checkable, held-out (colour, shape) pairs for a compositional-generalisation split, and
spoken versions of every question.

``omniphi data shapes --out DIR --n N --seed S`` writes::

    DIR/images/000000.png ...         N images of 1-3 shapes on a pale gradient background
    DIR/captions.json                  LLaVA-Pretrain format, train images (stage-1 "plain")
    DIR/captions_val.json, captions_test.json
    DIR/train.json, val.json, test.json
                                       LLaVA-Instruct format, one question per record, with extra
                                       fields question_type, question, answer, heldout, scene
    DIR/spoken/<key>.wav               (with --speak) each question spoken, varied voice/rate
    DIR/train_spoken.json, ...         first question is "<image>\\n<audio>", "audio": wav path
    DIR/train_asr.jsonl, ...           (with --speak) ASR manifest: each spoken question and its text
    DIR/metadata.json                  seed, n, vocabulary, held-out pairs, split sizes

Scene rules keep every question unambiguous: within one image all shapes differ, all colours
differ and all positions differ. Positions are five fixed regions (left, right, top, bottom,
centre) with small jitter, sized so shapes never overlap.

Held-out pairs: each shape gets one colour (distinct colours, drawn from the seed) that never
appears with it in train or val images, captions or questions, not even in "no" answers.
Every other test image is forced to contain one; the rest of test is drawn freely.

Answers are short and canonical ("Red.", "Circle.", "Two.", "Left.", "Yes.") and the bare
word is stored as ``answer``; :func:`answer_matches` is the normalised exact match to score with.

Determinism: every image has its own RNG seeded from (seed, index), PNGs carry no metadata,
JSON is written with sorted structure, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from omniphi.data.llava import AUDIO_TOKEN as AUDIO_PLACEHOLDER, IMAGE_TOKEN as IMAGE_PLACEHOLDER, LlavaDataset

GENERATOR_VERSION = 2  # 2: "Is there an orange …" (was "a orange")

# What a model trained on this world should say about any other picture: one honest sentence
# (the starter's training data pairs it with photos and drawings; its model card says the same).
OUT_OF_WORLD_ANSWER = ("I was trained only on pictures of coloured shapes, so I cannot tell you "
                       "what this picture shows.")

# Well separated in hue and brightness; all readable on a pale background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 84, 220),
    "yellow": (245, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
# Region centres as fractions of the image side. With radius <= 0.12 and jitter <= 0.02 the
# closest pair (centre/left) stays > 0.27 apart: no overlaps, nothing cut off at the edge.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.17, 0.5),
    "right": (0.83, 0.5),
    "top": (0.5, 0.17),
    "bottom": (0.5, 0.83),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
CAPTION_ORDER = ("top", "left", "centre", "right", "bottom")  # reading order
QUESTION_TYPES = ("colour", "shape", "count", "position", "yesno")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "What is in the picture?",
    "Give a short description of the image.",
    "Summarize the picture.",
    "What does the image show?",
)
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    position: str
    radius: float  # fraction of the image side
    dx: float
    dy: float
    angle: float  # degrees

    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    def as_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "position": self.position}


# --------------------------------------------------------------------------- vocabulary


def heldout_pairs(seed: int) -> list[tuple[str, str]]:
    """(colour, shape) pairs reserved for test: one colour per shape, all colours distinct."""
    colours = list(COLOURS)
    random.Random(f"shapes-heldout:{seed}").shuffle(colours)
    return [(colours[i], shape) for i, shape in enumerate(SHAPES)]


def split_labels(n: int, seed: int, val_frac: float, test_frac: float) -> list[str]:
    def size(frac: float) -> int:  # a tiny run still gets one val and one test image
        return max(1, round(n * frac)) if frac > 0 and n >= 3 else round(n * frac)

    n_test, n_val = size(test_frac), size(val_frac)
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    random.Random(f"shapes-splits:{seed}").shuffle(labels)
    return labels


# --------------------------------------------------------------------------- scenes


def sample_scene(rng: random.Random, heldout: set[tuple[str, str]], allow_heldout: bool, force_heldout: bool) -> list[Shape]:
    k = rng.choice((1, 2, 3))
    positions = rng.sample(list(POSITIONS), k)
    shapes = rng.sample(SHAPES, k)
    used: set[str] = set()
    objects = []
    for j, (shape, position) in enumerate(zip(shapes, positions)):
        if force_heldout and j == 0:
            options = [c for c, s in heldout if s == shape]
        else:
            options = [c for c in COLOURS if c not in used and (allow_heldout or (c, shape) not in heldout)]
        colour = rng.choice(options)
        used.add(colour)
        objects.append(
            Shape(
                shape=shape,
                colour=colour,
                position=position,
                radius=rng.uniform(0.09, 0.12),
                dx=rng.uniform(-0.02, 0.02),
                dy=rng.uniform(-0.02, 0.02),
                angle=rng.uniform(-15.0, 15.0),
            )
        )
    return objects


def _polygon(cx: float, cy: float, radii: Sequence[float], angle: float, offset: float) -> list[tuple[float, float]]:
    n = len(radii)
    pts = []
    for i, r in enumerate(radii):
        a = math.radians(offset + angle + 360.0 * i / n)
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def render_scene(objects: Sequence[Shape], size: int, rng: random.Random,
                 fills: Sequence[tuple[int, int, int]] | None = None) -> Image.Image:
    """The picture of `objects`; `fills`, one RGB per object, paints them in other colours than
    their names' (the starter's vision step uses it to show shapes in colours outside the palette)."""
    if fills is not None and len(fills) != len(objects):
        raise ValueError(f"{len(fills)} fills for {len(objects)} objects")
    s = size * SUPERSAMPLE
    # Background: a gentle linear gradient between two pale tints ("lightly textured").
    base = np.array([rng.uniform(205, 240)] * 3) + np.array([rng.uniform(-10, 10) for _ in range(3)])
    other = base + np.array([rng.uniform(-18, 18) for _ in range(3)])
    theta = rng.uniform(0, 2 * math.pi)
    # A linear ramp is computed on a coarse grid and bilinearly resized: same look, ~10x cheaper.
    g = np.linspace(-0.5, 0.5, 8)
    t = (np.cos(theta) * g[None, :] + np.sin(theta) * g[:, None]) / math.sqrt(2) + 0.5
    bg = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    image = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8), "RGB").resize((s, s), Image.BILINEAR)

    draw = ImageDraw.Draw(image)
    width = max(1, round(s / 112))
    for index, obj in enumerate(objects):
        px, py = POSITIONS[obj.position]
        cx, cy, r = (px + obj.dx) * s, (py + obj.dy) * s, obj.radius * s
        fill = COLOURS[obj.colour] if fills is None else tuple(fills[index])
        outline = tuple(int(c * 0.6) for c in fill)
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
            continue
        if obj.shape == "square":
            pts = _polygon(cx, cy, [r * 1.13] * 4, obj.angle, 45.0)
        elif obj.shape == "triangle":
            pts = _polygon(cx, cy + r * 0.15, [r * 1.15] * 3, obj.angle, -90.0)
        elif obj.shape == "star":
            pts = _polygon(cx, cy, [r * 1.15, r * 0.48] * 5, obj.angle, -90.0)
        elif obj.shape == "hexagon":
            pts = _polygon(cx, cy, [r * 1.05] * 6, obj.angle, 0.0)
        else:
            raise ValueError(obj.shape)
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    # Drawing at 2x and box-filtering down gives anti-aliased edges, deterministically.
    return image.reduce(SUPERSAMPLE)


def caption(objects: Sequence[Shape]) -> str:
    ordered = sorted(objects, key=lambda o: CAPTION_ORDER.index(o.position))
    phrases = [f"a {o.colour} {o.shape} {POSITION_PHRASES[o.position]}" for o in ordered]
    if len(phrases) == 1:
        text = phrases[0]
    else:
        text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


# --------------------------------------------------------------------------- questions


def _answer_text(word: str) -> str:
    return word[0].upper() + word[1:] + "."


def _a(word: str) -> str:
    """The indefinite article and `word` ("an orange", "a red")."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_question(
    qtype: str,
    objects: Sequence[Shape],
    rng: random.Random,
    heldout: set[tuple[str, str]],
    allow_heldout: bool,
    want_yes: bool,
) -> tuple[str, str, bool]:
    """(question, answer word, involves a held-out pair)."""
    scene_pairs = {o.pair() for o in objects}
    if qtype == "count":
        return "How many shapes are there?", NUMBER_WORDS[len(objects)], bool(scene_pairs & heldout)
    if qtype == "yesno" and not want_yes:
        absent = [
            (c, s) for c in COLOURS for s in SHAPES
            if (c, s) not in scene_pairs and (allow_heldout or (c, s) not in heldout)
        ]
        # Half the "no" questions name a colour or shape that *is* in the picture, so the
        # answer needs the binding of the two, not just spotting one word.
        near = [p for p in absent if any(p[0] == o.colour or p[1] == o.shape for o in objects)]
        colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
        return f"Is there {_a(colour)} {shape}?", "no", (colour, shape) in heldout
    target = rng.choice(list(objects))
    involves = target.pair() in heldout
    if qtype == "colour":
        return f"What colour is the {target.shape}?", target.colour, involves
    if qtype == "shape":
        return f"What shape is the {target.colour} object?", target.shape, involves
    if qtype == "position":
        return f"Where is the {target.colour} {target.shape}?", target.position, involves
    if qtype == "yesno":
        return f"Is there {_a(target.colour)} {target.shape}?", "yes", involves
    raise ValueError(f"unknown question type {qtype!r}")


def transcription_prompt() -> str:
    """The words of this world as a prompt for a speech recogniser (``omniphi.asr.Transcriber.prompt``):
    Whisper spells a word the way its prompt does, so a model that knows only this world hears its
    colours, shapes and places in them instead of words that merely sound alike."""
    return (f"Questions about a picture of coloured shapes. Colours: {', '.join(COLOURS)}. "
            f"Shapes: {', '.join(SHAPES)}. Places: {', '.join(POSITION_PHRASES.values())}. "
            "How many shapes are there?")


def answer_for(qtype: str, question: str, scene: Sequence[dict[str, Any]]) -> str:
    """Re-derive the answer to a generated question from the scene alone (used by tests and
    as executable documentation of what each question means)."""
    if qtype == "count":
        return NUMBER_WORDS[len(scene)]
    if qtype == "colour":
        shape = re.fullmatch(r"What colour is the (\w+)\?", question).group(1)
        return next(o["colour"] for o in scene if o["shape"] == shape)
    if qtype == "shape":
        colour = re.fullmatch(r"What shape is the (\w+) object\?", question).group(1)
        return next(o["shape"] for o in scene if o["colour"] == colour)
    colour, shape = re.fullmatch(r"(?:Where is the|Is there an?) (\w+) (\w+)\?", question).groups()
    match = [o for o in scene if o["colour"] == colour and o["shape"] == shape]
    if qtype == "position":
        return match[0]["position"]
    return "yes" if match else "no"


_ARTICLES = re.compile(r"^(?:(?:on|at|in) )?(?:the|a|an) ")
_DIGITS = {"1": "one", "2": "two", "3": "three", "0": "zero"}
_SPELLING = {"center": "centre", "color": "colour", "grey": "gray"}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and leading articles/prepositions dropped, digits as words,
    US spellings mapped: "On the left." → "left", "2" → "two", "A circle" → "circle"."""
    t = re.sub(r"[^\w\s]", " ", text.lower())
    t = " ".join(t.split())
    t = _ARTICLES.sub("", t)
    return " ".join(_SPELLING.get(w, _DIGITS.get(w, w)) for w in t.split())


def answer_matches(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


# --------------------------------------------------------------------------- writing


def _dump(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


OWN_FILES = (
    "captions.json", "captions_val.json", "captions_test.json",
    "train.json", "val.json", "test.json",
    "train_spoken.json", "val_spoken.json", "test_spoken.json", "metadata.json",
    "train_asr.jsonl", "val_asr.jsonl", "test_asr.jsonl",
    "train_dialogues.json", "val_dialogues.json", "test_dialogues.json",
    # augmented copies of the spoken questions (omniphi/data/augment.py) and pictures outside the
    # shapes world (omniphi/data/outside.py), written into the dataset by the starter build
    "train_spoken_clean.json", "val_spoken_clean.json", "test_spoken_clean.json",
    "outside_train.json", "outside_test.jsonl",
)
OWN_FOLDERS = ("images", "spoken", "spoken-hard", "outside")


def _write_asr_manifest(path: Path, spoken: Sequence[dict[str, Any]]) -> None:
    """The spoken questions as an ASR manifest (audio → the question's text): for training the
    native audio path to hear the questions, and for the Whisper WER of the spoken questions."""
    lines = [json.dumps({"id": r["id"], "audio": r["audio"], "text": r["question"]}, ensure_ascii=False)
             for r in spoken]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "metadata.json").exists():
            raise FileExistsError(f"{out} is not empty and is not a shapes dataset; choose another --out")
        # A previous run: remove what we own so a smaller --n leaves no stale images behind.
        for name in OWN_FOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def generate_shapes(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    image_size: int = 224,
    questions_per_image: int = 3,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    speaker=None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Write the dataset (see the module docstring); ``speaker`` (a tts.Speaker) adds the
    spoken versions. Returns the metadata."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 1 <= questions_per_image <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_image must be 1..{len(QUESTION_TYPES)}")
    if image_size < 32:
        raise ValueError("image_size must be at least 32")
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac >= 1:
        raise ValueError("val_frac and test_frac must be >= 0 and sum to less than 1")
    out = Path(out)
    _prepare_out(out)

    held = heldout_pairs(seed)
    held_set = set(held)
    labels = split_labels(n, seed, val_frac, test_frac)
    captions: dict[str, list] = {"train": [], "val": [], "test": []}
    qa: dict[str, list] = {"train": [], "val": [], "test": []}
    yes_no = {"train": [0, 0], "val": [0, 0], "test": [0, 0]}
    test_seen = 0

    for i, split in enumerate(labels):
        rng = random.Random(f"shapes-image:{seed}:{i}")
        in_test = split == "test"
        force = in_test and test_seen % 2 == 0
        test_seen += in_test
        objects = sample_scene(rng, held_set, allow_heldout=in_test, force_heldout=force)
        image_id = f"{i:06d}"
        rel = f"images/{image_id}.png"
        render_scene(objects, image_size, rng).save(out / rel, format="PNG", compress_level=6)
        scene = [o.as_dict() for o in objects]

        prompt = rng.choice(CAPTION_PROMPTS)
        human = f"<image>\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n<image>"  # both occur in LLaVA-Pretrain
        captions[split].append({
            "id": image_id,
            "image": rel,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption(objects)}],
        })

        for k, qtype in enumerate(rng.sample(QUESTION_TYPES, questions_per_image)):
            counts = yes_no[split]
            want_yes = counts[0] <= counts[1]  # exact yes/no balance within each split
            question, answer, involves = make_question(qtype, objects, rng, held_set, in_test, want_yes)
            if qtype == "yesno":
                counts[0 if answer == "yes" else 1] += 1
            qa[split].append({
                "id": f"{image_id}-{k}",
                "image": rel,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": _answer_text(answer)},
                ],
                "question_type": qtype,
                "question": question,
                "answer": answer,
                "heldout": involves,
                "scene": scene,
            })

    _dump(out / "captions.json", captions["train"])
    _dump(out / "captions_val.json", captions["val"])
    _dump(out / "captions_test.json", captions["test"])
    for split in ("train", "val", "test"):
        _dump(out / f"{split}.json", qa[split])

    spoken_info = None
    if speaker is not None:
        from omniphi.data.tts import spoken_records

        for split in ("train", "val", "test"):
            records, _ = spoken_records(qa[split], speaker, out / "spoken", relative_to=out, jobs=jobs)
            _dump(out / f"{split}_spoken.json", records)
            _write_asr_manifest(out / f"{split}_asr.jsonl", records)
        spoken_info = {"command": speaker.command, "voices": speaker.voices, "rates": speaker.rates, "seed": speaker.seed}

    metadata = {
        "generator": "omniphi.data.shapes",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "image_size": image_size,
        "questions_per_image": questions_per_image,
        "splits": {s: {"images": len(captions[s]), "questions": len(qa[s])} for s in ("train", "val", "test")},
        "vocabulary": {
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "shapes": list(SHAPES),
            "positions": list(POSITIONS),
            "question_types": list(QUESTION_TYPES),
            "answers": sorted({*COLOURS, *SHAPES, *POSITIONS, *NUMBER_WORDS.values(), "yes", "no"}),
        },
        "heldout_pairs": [{"colour": c, "shape": s} for c, s in held],
        "spoken": spoken_info,
    }
    _dump(out / "metadata.json", metadata)
    return metadata


# Where the picture goes relative to the first question (OpenAI's documentation puts the text first;
# LLaVA's data mostly puts the image first): a model trained on one order answered 55 % of the
# questions with the other (87 % with its own).
IMAGE_ORDERS = ("before", "after", "between")
_LEAD_INS = ("Look at this picture.", "Here is an image.", "A question about this picture:")


def _place_image(question: str, rng: random.Random | None, spoken: bool) -> str:
    """The first turn's text with the <image> placeholder before, after or between its text parts
    (rng None: before, the layout of the single-question records)."""
    order = rng.choices(IMAGE_ORDERS, weights=(0.4, 0.4, 0.2))[0] if rng is not None else "before"
    if order == "before":
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    if order == "after":
        return f"{question}\n{IMAGE_PLACEHOLDER}"
    lead = rng.choice(_LEAD_INS)
    return f"{lead}\n{IMAGE_PLACEHOLDER}\n{question}"


def write_dialogues(root: str | os.PathLike, split: str = "train", spoken_fraction: float = 0.5, seed: int = 0,
                    system_prompts: Sequence[str | None] = (None,), mixed_order: bool = False,
                    single_fraction: float = 0.0) -> Path:
    """Each image's questions as one multi-turn LLaVA record, each question typed or (with
    probability ``spoken_fraction``, seeded per question) spoken: ``{split}_dialogues.json``.
    Why: the image tokens and the system prompt are then paid for once per image instead of once
    per question, and a dialogue mixes both ways of asking, as a user of the chat would.
    Each dialogue gets one of ``system_prompts`` (None: none, so the chat template's default),
    so that a model trained on them also answers under the system prompt a server sets.
    ``mixed_order``: the picture goes before, after or between the first question's text parts
    (IMAGE_ORDERS, seeded per question), so that no order is the only one the model knows.
    ``single_fraction``: that share of the images (seeded per image) gives one record per question
    instead of one dialogue, each with the picture placed anew. Why: in a dialogue only the first
    question can have the picture after it, so mixed dialogues alone put the picture after the
    question in ~13 % of the answers, and the build trained on them answered ~20 points worse
    with the picture last than first."""
    root = Path(root)
    typed = json.loads((root / f"{split}.json").read_text(encoding="utf-8"))
    spoken_path = root / f"{split}_spoken.json"
    spoken = {r["id"]: r for r in json.loads(spoken_path.read_text(encoding="utf-8"))} if spoken_path.is_file() else {}
    if spoken_fraction > 0 and not spoken:
        raise FileNotFoundError(f"{spoken_path} is missing: write the dataset with spoken questions (--speak)")
    by_image: dict[str, list[dict]] = {}
    for record in typed:
        by_image.setdefault(record["image"], []).append(record)
    out = []
    for image, records in by_image.items():
        system = random.Random(f"shapes-system:{seed}:{image}").choice(list(system_prompts))
        if random.Random(f"shapes-single:{seed}:{image}").random() < single_fraction:
            groups = [(record["id"], [record]) for record in records]
        else:
            groups = [(records[0]["id"].rsplit("-", 1)[0], records)]
        for record_id, questions in groups:
            turns, audio = [], []
            for k, record in enumerate(questions):
                order = random.Random(f"shapes-order:{seed}:{record['id']}") if mixed_order else None
                if random.Random(f"shapes-dialogue:{seed}:{record['id']}").random() < spoken_fraction:
                    value = _place_image(AUDIO_PLACEHOLDER, order, spoken=True) if k == 0 else AUDIO_PLACEHOLDER
                    turns.append({"from": "human", "value": value})
                    audio.append(spoken[record["id"]]["audio"])
                else:
                    value = _place_image(record["question"], order, spoken=False) if k == 0 else record["question"]
                    turns.append({"from": "human", "value": value})
                turns.append({"from": "gpt", "value": _answer_text(record["answer"])})
            if system is not None:
                turns.insert(0, {"from": "system", "value": system})
            dialogue = {"id": record_id, "image": image, "conversations": turns}
            if audio:
                dialogue["audio"] = audio
            out.append(dialogue)
    path = root / f"{split}_dialogues.json"
    _dump(path, out)
    return path


# --------------------------------------------------------------------------- reading back


def load_shapes(root: str | os.PathLike, split: str = "train", spoken: bool = False, captions: bool = False) -> LlavaDataset:
    """The dataset at ``root`` as samples: question records (text or ``spoken`` questions)
    or, with ``captions=True``, the stage-1 caption records in "plain" mode. ``meta`` of each
    sample holds question_type / question / answer / heldout / scene."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if captions:
        name = "captions.json" if split == "train" else f"captions_{split}.json"
        return LlavaDataset(root / name, image_folder=root, mode="plain")
    name = f"{split}_spoken.json" if spoken else f"{split}.json"
    return LlavaDataset(root / name, image_folder=root, audio_folder=root)
