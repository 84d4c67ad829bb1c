"""`make starter`: build the starter model's trained weights from nothing but the packaged parts.

    python -m omniphi.starter.build [--install] [--fresh]

1. data      `omniphi data shapes --out data/starter-shapes --n 4000 --seed 0 --val-frac 0.075
             --test-frac 0.075` (its default voices: flite's 4 and espeak-ng's 12, half the questions
             each, × 8 speaking rates; Whisper tiny.en mishears espeak-ng ~25 % of words and flite
             ~5 %, and the native path must not collapse where Whisper mishears); then
             each training image's three questions as one dialogue, each question typed or spoken
             (train_dialogues.json: the image and system prompt are paid for once per three answers)
   The data step also makes half the spoken training questions hard (speed, noise, room, telephone
   band, browser codecs: omniphi/data/augment.py) and draws pictures outside the shapes world
   answered with one honest sentence (omniphi/data/outside.py). Its "dialogues" step puts the
   picture before, after or between the first question's text, and asks a third of the images'
   questions one per record (DIALOGUES), so that the picture comes after the question often enough.
2. replay    the untrained SmolLM2's own answers to general questions and its own prose
             (omniphi/starter/replay.py) → data/starter-replay, mixed into step 6 so the LoRA keeps
             what SmolLM2 knew; then (step "conversations") its answers to follow-up questions, the
             general questions spoken by several voices, and general sentences spoken for the audio
             steps (omniphi/starter/conversations.py)
3. vision    the vision tower learns to write each picture as a caption in SmolLM2's word space
             (omniphi/starter/vision.py) → runs/starter/vision
4. audio     recipes/starter-audio.yaml (the audio_words stage, omniphi/train/audio_words.py): the
             audio projector learns to write each spoken question and general sentence as its words
             in SmolLM2's word space → runs/starter/audio
5. align     recipes/starter-align.yaml → runs/starter/align
6. instruct  recipes/starter-instruct.yaml → runs/starter/instruct
7. package   the chain of stages flattened onto the "starter-base" preset → runs/starter/weights,
             with its greedy generation defaults and model card (omniphi/starter/card.py), and with
             --install copied to omniphi/starter_weights (what the "starter" preset loads)

Each finished step is kept and skipped on a re-run (delete runs/starter, or --fresh, to redo all),
so an interrupted build continues where it stopped. Step times go to runs/starter/timings.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from omniphi.data.shapes import GENERATOR_VERSION, transcription_prompt
from omniphi.model_card import write_transcription_prompt
from omniphi.data.tts import DEFAULT_TTS, make_speaker

REPO = Path(__file__).resolve().parents[2]
DATA = Path("data/starter-shapes")
REPLAY = Path("data/starter-replay")
WORK = Path("runs/starter")
DATA_N = 4000
DATA_SEED = 0
HELD_OUT_FRACTION = 0.075  # each of val and test: 300 images, 900 questions


# What the data step adds to `omniphi data shapes`'s output; a change redoes the step.
HARD_FRACTION = 0.5  # of the training split's spoken questions, made hard (omniphi/data/augment.py)
OUTSIDE_TRAIN, OUTSIDE_TEST = 300, 200  # pictures outside the shapes world (omniphi/data/outside.py)
EXTRAS_FILE = "starter-extras.json"
# How the questions become training records (omniphi.data.shapes.write_dialogues); a change redoes
# only the "dialogues" step, not the pictures or the vision step trained on them.
DIALOGUES = {"spoken_fraction": 0.5, "mixed_order": True, "single_fraction": 0.35}
DIALOGUES_FILE = "starter-dialogues.json"


def _extras() -> dict:
    return {"hard_fraction": HARD_FRACTION, "outside": [OUTSIDE_TRAIN, OUTSIDE_TEST], "seed": DATA_SEED}


def _data_ready(root: Path) -> bool:
    meta = root / "metadata.json"
    if not meta.is_file() or not (root / EXTRAS_FILE).is_file():
        return False
    info = json.loads(meta.read_text())
    spoken = info.get("spoken") or {}
    return (info.get("n") == DATA_N and info.get("seed") == DATA_SEED and info.get("version") == GENERATOR_VERSION
            and spoken.get("command") == _speaker().command
            and json.loads((root / EXTRAS_FILE).read_text()) == _extras())


# The chat template's default system prompt (the CLI, eval), the server's default (the web page)
# and a plain one: the served model must not depend on which one it gets.
def _system_prompts() -> tuple[str | None, ...]:
    from omniphi.serve.state import ServeConfig

    return (None, ServeConfig().system_prompt, "You are a helpful assistant.")


def _speaker():
    """`omniphi data shapes`'s default voices (both engines, all their voices): what a user's
    own spoken questions will most likely sound like, and what the eval speaks with."""
    return make_speaker(DEFAULT_TTS, seed=DATA_SEED)


def step_data() -> bool:
    from omniphi.data.augment import augment_spoken
    from omniphi.data.outside import write_outside
    from omniphi.data.shapes import generate_shapes

    if _data_ready(DATA):
        return False
    (DATA / EXTRAS_FILE).unlink(missing_ok=True)  # not done until the extras are written too
    generate_shapes(DATA, n=DATA_N, seed=DATA_SEED, val_frac=HELD_OUT_FRACTION, test_frac=HELD_OUT_FRACTION,
                    speaker=_speaker(), jobs=2)
    hard = augment_spoken(DATA, "train", HARD_FRACTION, seed=DATA_SEED)
    outside = write_outside(DATA, OUTSIDE_TRAIN, OUTSIDE_TEST, seed=DATA_SEED)
    (DATA / EXTRAS_FILE).write_text(json.dumps(_extras()) + "\n")
    print(f"[data] {hard} spoken training questions made hard; pictures outside the shapes world: {outside}",
          file=sys.stderr)
    return True


def step_dialogues() -> bool:
    from omniphi.data.shapes import write_dialogues

    marker = DATA / DIALOGUES_FILE
    wanted = {**DIALOGUES, "seed": DATA_SEED, "system_prompts": list(_system_prompts())}
    if (marker.is_file() and json.loads(marker.read_text()) == wanted
            and all((DATA / f"{split}_dialogues.json").is_file() for split in ("train", "val"))):
        return False
    marker.unlink(missing_ok=True)
    for split in ("train", "val"):
        write_dialogues(DATA, split, seed=DATA_SEED, system_prompts=_system_prompts(), **DIALOGUES)
    marker.write_text(json.dumps(wanted) + "\n")
    return True


def step_replay() -> bool:
    from omniphi.starter.replay import replay_settings, write_replay

    meta = REPLAY / "metadata.json"
    prompts = _system_prompts()
    wanted = replay_settings(system_prompts=prompts, seed=DATA_SEED)
    if meta.is_file() and {k: v for k, v in json.loads(meta.read_text()).items() if k in wanted} == wanted:
        return False
    counts = write_replay(REPLAY, system_prompts=prompts, seed=DATA_SEED)
    print(f"[replay] {counts}", file=sys.stderr)
    return True


def step_conversations() -> bool:
    """Follow-up dialogues, spoken general questions and general speech, from the base (conversations.py)."""
    from omniphi.starter import conversations

    meta = REPLAY / "conversations.json"
    wanted = {"follow_ups": [list(c) for c in conversations.FOLLOW_UPS], "speaker": _speaker().command,
              "seed": DATA_SEED, "system_prompts": list(_system_prompts()),
              "spoken_voices": conversations.SPOKEN_VOICES_PER_QUESTION,
              "speech_voices": conversations.SPEECH_VOICES_PER_SENTENCE,
              "speech_texts": [conversations.SPEECH_TEXTS, conversations.SPEECH_TEXT_TOKENS]}
    if (meta.is_file() and json.loads(meta.read_text()) == wanted
            and all((REPLAY / name).is_file() for name in ("spoken_chat.json", "speech_asr.jsonl"))):
        return False
    meta.unlink(missing_ok=True)
    followups = conversations.write_followups(REPLAY, system_prompts=_system_prompts(), seed=DATA_SEED)
    spoken = conversations.write_spoken_chat(REPLAY, _speaker(), seed=DATA_SEED)
    conversations.write_speech_texts(REPLAY, seed=DATA_SEED)
    speech = conversations.write_general_speech(REPLAY, _speaker(), seed=DATA_SEED)
    meta.write_text(json.dumps(wanted, indent=1) + "\n")
    print(f"[conversations] {followups} follow-up dialogues, {spoken} spoken general questions, "
          f"{speech} clips of general speech", file=sys.stderr)
    return True


def step_vision() -> bool:
    from omniphi.starter.vision import pretrain_vision
    from omniphi.runtime.trained import is_training_output

    if is_training_output(WORK / "vision"):
        return False
    pretrain_vision(DATA, WORK / "vision", base="starter-base")
    return True


def step_recipe(name: str) -> bool:
    from omniphi.runtime.trained import is_training_output
    from omniphi.train.recipe import load_recipe
    from omniphi.train.run import run_training
    from omniphi.train.trainer import last_checkpoint

    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    if is_training_output(recipe.training.output_dir):
        return False
    interrupted = last_checkpoint(recipe.training.output_dir) is not None
    run_training(recipe, resume=True if interrupted else None)
    return True


def step_package(install: bool) -> bool:
    from omniphi.presets import STARTER_WEIGHTS_DIR
    from omniphi.runtime.trained import flatten_trained

    weights = WORK / "weights"
    shutil.rmtree(weights, ignore_errors=True)
    # The small model reads a picture after the question ~13 points worse than before it (README), so
    # it is served every message's pictures first, whatever order the user sent.
    flatten_trained(WORK / "instruct", weights, media_placement="images_first")
    if install:  # the card's sample picture and spoken question are the new fixture's
        export_fixture()
    write_card(weights)
    # Whisper hears the starter's spoken questions with the words of its world in its prompt
    write_transcription_prompt(weights, transcription_prompt())
    size = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    print(f"[package] {weights}: {size / 2**20:.1f} MiB", file=sys.stderr)
    if install:
        shutil.rmtree(STARTER_WEIGHTS_DIR, ignore_errors=True)
        shutil.copytree(weights, STARTER_WEIGHTS_DIR)
        print(f"[package] installed in {STARTER_WEIGHTS_DIR}; test questions in {FIXTURE}", file=sys.stderr)
    return True


FIXTURE = REPO / "tests" / "fixtures" / "starter-shapes"
FIXTURE_IMAGES = 8


def export_fixture(root: Path = DATA, out: Path = FIXTURE, n_images: int = FIXTURE_IMAGES) -> None:
    """A few held-out test images with their questions (typed and spoken) for the tests of the
    committed weights, plus one picture with a circle and the spoken "What colour is the circle?"."""
    records = json.loads((root / "test.json").read_text())
    spoken = {r["id"]: r for r in json.loads((root / "test_spoken.json").read_text())}
    images = list(dict.fromkeys(r["image"] for r in records))[:n_images]
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "spoken").mkdir()
    chosen = []
    for record in records:
        if record["image"] not in images:
            continue
        audio = spoken[record["id"]]["audio"]
        shutil.copy(root / record["image"], out / record["image"])
        shutil.copy(root / audio, out / "spoken" / Path(audio).name)
        chosen.append({k: record[k] for k in ("id", "image", "question", "answer", "question_type", "heldout", "scene")}
                      | {"audio": f"spoken/{Path(audio).name}"})
    circle = next(r for r in records if r["question"] == "What colour is the circle?")
    circle_audio = next(r for r in spoken.values() if r["spoken_text"] == "What colour is the circle?")
    shutil.copy(root / circle["image"], out / "circle.png")
    shutil.copy(root / circle_audio["audio"], out / "what-colour-is-the-circle.wav")
    fixture = {"questions": chosen, "circle": {"image": "circle.png", "audio": "what-colour-is-the-circle.wav",
                                                "answer": circle["answer"]}}
    (out / "questions.json").write_text(json.dumps(fixture, indent=1) + "\n")


def write_card(out: Path, fixture: Path = FIXTURE) -> None:
    """The starter's generation defaults and model card (omniphi/starter/card.py) into `out`,
    with the fixture's circle picture and its spoken question as the card's samples."""
    from omniphi.starter.card import write_starter_card

    circle = json.loads((fixture / "questions.json").read_text())["circle"]
    write_starter_card(out, fixture / circle["image"], circle["answer"], fixture / circle["audio"],
                       "What colour is the circle?")


# What each trained step's output was made from: when one of these is redone, the output is stale.
INPUTS = {
    "vision": {"data"},
    "audio": {"data", "vision", "conversations"},
    "align": {"data", "audio", "conversations"},
    "instruct": {"data", "dialogues", "replay", "conversations", "align"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniphi.starter.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help="copy the result to omniphi/starter_weights")
    parser.add_argument("--fresh", action="store_true", help="delete runs/starter first (the data is kept)")
    args = parser.parse_args(argv)
    if Path.cwd().resolve() != REPO:
        parser.error(f"run from the repository root ({REPO}): the recipes use paths relative to it")
    if args.fresh:
        shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    timings_path = WORK / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    steps = [
        ("data", step_data),
        ("dialogues", step_dialogues),
        ("replay", step_replay),
        ("conversations", step_conversations),
        ("vision", step_vision),
        ("audio", lambda: step_recipe("starter-audio")),
        ("align", lambda: step_recipe("starter-align")),
        ("instruct", lambda: step_recipe("starter-instruct")),
        ("package", lambda: step_package(args.install)),
    ]
    started = time.monotonic()
    redone: set[str] = set()
    for name, step in steps:
        t0 = time.monotonic()
        stale = redone & INPUTS.get(name, set())
        if stale and (WORK / name).exists():  # trained on what was just made anew: train again
            print(f"[starter] {name}: discarding {WORK / name}, made before {', '.join(sorted(stale))} was redone",
                  file=sys.stderr)
            shutil.rmtree(WORK / name)
        print(f"[starter] {name} ...", file=sys.stderr)
        ran = step()
        if ran:
            redone.add(name)
        seconds = time.monotonic() - t0
        if not ran:  # a skipped step keeps the time it took when it ran
            print(f"[starter] {name} already done", file=sys.stderr)
            continue
        timings[name] = round(seconds, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        print(f"[starter] {name} done in {seconds:.0f} s", file=sys.stderr)
    print(f"[starter] all steps in {time.monotonic() - started:.0f} s this run; step times {timings}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
