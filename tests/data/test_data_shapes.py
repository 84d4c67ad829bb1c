import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniphi import media
from omniphi.cli import main
from omniphi.data.shapes import (
    COLOURS, POSITIONS, SHAPES, answer_for, answer_matches, caption, generate_shapes, load_shapes, normalize_answer,
)
from omniphi.data.tts import Speaker
from tests.conftest import require_program

N, SEED, SIZE = 40, 7, 96


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(root: Path, name: str):
    return json.loads((root / name).read_text())


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, n=N, seed=SEED, image_size=SIZE)
    return root


def test_same_seed_same_bytes_other_seed_differs(shapes_dir, tmp_path):
    generate_shapes(tmp_path / "again", n=N, seed=SEED, image_size=SIZE)
    assert digest(tmp_path / "again") == digest(shapes_dir)
    generate_shapes(tmp_path / "other", n=N, seed=SEED + 1, image_size=SIZE)
    other = digest(tmp_path / "other")
    assert other["images/000000.png"] != digest(shapes_dir)["images/000000.png"]


def test_split_sizes_and_metadata(shapes_dir):
    meta = load(shapes_dir, "metadata.json")
    assert meta["seed"] == SEED and meta["n"] == N
    assert {s: v["images"] for s, v in meta["splits"].items()} == {"train": 32, "val": 4, "test": 4}
    for split, v in meta["splits"].items():
        records = load(shapes_dir, f"{split}.json")
        assert len(records) == v["questions"] == 3 * v["images"]
        assert len({r["id"] for r in records}) == len(records)
    assert len(load(shapes_dir, "captions.json")) == 32
    assert len(load(shapes_dir, "captions_test.json")) == 4
    images = {r["image"] for s in ("train", "val", "test") for r in load(shapes_dir, f"{s}.json")}
    assert len(images) == N  # splits share no image
    assert len(list((shapes_dir / "images").glob("*.png"))) == N
    held = {(p["colour"], p["shape"]) for p in meta["heldout_pairs"]}
    assert {s for _, s in held} == set(SHAPES)  # one held-out colour per shape
    assert len({c for c, _ in held}) == len(SHAPES)


def test_heldout_pairs_only_in_test(shapes_dir):
    held = {(p["colour"], p["shape"]) for p in load(shapes_dir, "metadata.json")["heldout_pairs"]}
    for split in ("train", "val"):
        for r in load(shapes_dir, f"{split}.json"):
            assert not {(o["colour"], o["shape"]) for o in r["scene"]} & held
            assert not r["heldout"]
            assert not any(f"{c} {s}" in r["question"] for c, s in held)  # not even in "no" questions
        for r in load(shapes_dir, "captions.json" if split == "train" else "captions_val.json"):
            assert not any(f"{c} {s}" in r["conversations"][1]["value"] for c, s in held)
    test = load(shapes_dir, "test.json")
    scenes_with_held = {r["image"] for r in test if {(o["colour"], o["shape"]) for o in r["scene"]} & held}
    assert len(scenes_with_held) >= 2  # every other test image is forced to hold one
    assert any(r["heldout"] for r in test)


def test_answers_follow_from_the_scene(shapes_dir):
    types, yesno = Counter(), Counter()
    for split in ("train", "val", "test"):
        split_yesno = Counter()
        for r in load(shapes_dir, f"{split}.json"):
            scene = r["scene"]
            assert 1 <= len(scene) <= 3
            for key in ("colour", "shape", "position"):
                assert len({o[key] for o in scene}) == len(scene)  # unambiguous questions
            assert answer_for(r["question_type"], r["question"], scene) == r["answer"]
            assert " a orange" not in r["question"] and " an red" not in r["question"]  # English articles
            human, gpt = r["conversations"]
            assert human == {"from": "human", "value": "<image>\n" + r["question"]}
            assert gpt["value"] == r["answer"].capitalize() + "."
            types[r["question_type"]] += 1
            if r["question_type"] == "yesno":
                split_yesno[r["answer"]] += 1
        assert abs(split_yesno["yes"] - split_yesno["no"]) <= 1  # balanced within each split
        yesno.update(split_yesno)
    assert set(types) == {"colour", "shape", "count", "position", "yesno"}
    assert yesno["yes"] > 0 and yesno["no"] > 0


def test_images_show_the_scene(shapes_dir):
    """The pixel at each object's region centre has exactly the object's colour; the
    background elsewhere is pale."""
    by_image = {r["image"]: r["scene"] for s in ("train", "val", "test") for r in load(shapes_dir, f"{s}.json")}
    for rel, scene in by_image.items():
        im = Image.open(shapes_dir / rel)
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
        for o in scene:
            x, y = POSITIONS[o["position"]]
            assert im.getpixel((round(x * (SIZE - 1)), round(y * (SIZE - 1)))) == COLOURS[o["colour"]], (rel, o)
        assert min(im.getpixel((0, 0))) > 170


def test_captions_match_scenes(shapes_dir):
    caps = {r["id"]: r for r in load(shapes_dir, "captions.json")}
    for r in load(shapes_dir, "train.json"):
        c = caps[r["id"].split("-")[0]]
        assert c["image"] == r["image"]
        assert "<image>" in c["conversations"][0]["value"]
        for o in r["scene"]:
            assert f"{o['colour']} {o['shape']}" in c["conversations"][1]["value"]


def test_caption_text():
    from omniphi.data.shapes import Shape

    a = Shape("circle", "red", "left", 0.1, 0, 0, 0)
    b = Shape("square", "blue", "right", 0.1, 0, 0, 0)
    c = Shape("star", "green", "top", 0.1, 0, 0, 0)
    assert caption([b, a]) == "A red circle on the left and a blue square on the right."
    assert caption([a, b, c]) == "A green star at the top, a red circle on the left and a blue square on the right."


def test_normalised_exact_match():
    assert normalize_answer("On the left.") == "left"
    assert answer_matches("2", "two") and answer_matches("A circle", "circle") and answer_matches("Center.", "centre")
    assert not answer_matches("red", "blue")


def test_loader_reads_questions_and_captions(shapes_dir):
    qa = load_shapes(shapes_dir, "val")
    s = qa[0]
    assert [p["type"] for p in s["messages"][0]["content"]] == ["image", "text"]
    assert s["messages"][0]["content"][0]["image"].size == (SIZE, SIZE)
    assert s["meta"]["answer"] and s["messages"][1]["content"][0]["text"].rstrip(".").lower() == s["meta"]["answer"]
    caps = load_shapes(shapes_dir, "train", captions=True)
    assert [p["type"] for p in caps[0]["messages"][0]["content"]] == ["image"]


@pytest.mark.usefixtures("espeak_ng")
def test_spoken_questions(tmp_path):
    speaker = Speaker(cache_dir=tmp_path / "tts", seed=3)
    root = tmp_path / "spoken_shapes"
    generate_shapes(root, n=10, seed=3, image_size=64, questions_per_image=2, speaker=speaker, jobs=2)
    voices = set()
    for split in ("train", "val", "test"):
        text_records = load(root, f"{split}.json")
        spoken = load(root, f"{split}_spoken.json")
        assert len(spoken) == len(text_records)
        for t, s in zip(text_records, spoken):
            assert s["id"] == t["id"] and s["answer"] == t["answer"] and s["spoken_text"] == t["question"]
            assert s["conversations"][0]["value"] == "<image>\n<audio>"
            assert s["conversations"][1] == t["conversations"][1]
            audio = media.load_audio(root / s["audio"])
            assert 0.4 < len(audio) / 16000 < 5.0 and np.abs(audio).max() > 0.05
            voices.add(s["voice"])
    assert len(voices) > 1
    ds = load_shapes(root, "train", spoken=True)
    assert [p["type"] for p in ds[0]["messages"][0]["content"]] == ["image", "audio"]
    # The ASR manifest: each spoken question's clip and its text.
    manifest = [json.loads(line) for line in (root / "train_asr.jsonl").read_text().splitlines()]
    spoken_train = load(root, "train_spoken.json")
    assert [(m["id"], m["audio"], m["text"]) for m in manifest] == [(s["id"], s["audio"], s["question"]) for s in spoken_train]
    # Same seed again (TTS cache warm): identical spoken JSON and WAV bytes.
    again = tmp_path / "again"
    generate_shapes(again, n=10, seed=3, image_size=64, questions_per_image=2, speaker=speaker)
    assert digest(again) == digest(root)
    check_dialogues(root)


def check_dialogues(root: Path) -> None:
    """write_dialogues: one record per image, its questions in order, each typed or spoken, with
    the answers of the question records; system prompts drawn from the given ones."""
    from omniphi.data.shapes import write_dialogues

    path = write_dialogues(root, "train", spoken_fraction=0.5, seed=1, system_prompts=(None, "Be brief."))
    dialogues = json.loads(path.read_text())
    typed = load(root, "train.json")
    spoken = {s["id"]: s for s in load(root, "train_spoken.json")}
    assert len(dialogues) == len({r["image"] for r in typed})
    kinds, systems = set(), set()
    for dialogue in dialogues:
        questions = [r for r in typed if r["image"] == dialogue["image"]]
        turns = dialogue["conversations"]
        if turns[0]["from"] == "system":
            systems.add(turns.pop(0)["value"])
        else:
            systems.add(None)
        assert [t["from"] for t in turns] == ["human", "gpt"] * len(questions)
        audio = iter(dialogue.get("audio", []))
        for k, q in enumerate(questions):
            asked = turns[2 * k]["value"].removeprefix("<image>\n" if k == 0 else "")
            assert turns[2 * k]["value"].startswith("<image>\n") == (k == 0)
            if asked == "<audio>":
                assert next(audio) == spoken[q["id"]]["audio"]
                kinds.add("spoken")
            else:
                assert asked == q["question"]
                kinds.add("typed")
            assert turns[2 * k + 1] == q["conversations"][1]
        assert next(audio, None) is None  # as many clips as <audio> placeholders
    assert kinds == {"spoken", "typed"} and systems == {None, "Be brief."}
    records = load_shapes(root, "train")  # the loader reads them as conversations
    from omniphi.data.llava import LlavaDataset

    sample = LlavaDataset(path, image_folder=root, audio_folder=root)[0]
    assert sample["messages"][-1]["role"] == "assistant" and len(records) >= len(dialogues)


def test_cli_shapes_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "shapes", "--out", str(out), "--n", "5", "--image-size", "48", "--no-speak"]) == 0
    assert "train 3 images" in capsys.readouterr().out
    # Re-running over a previous shapes directory replaces it (a smaller n leaves no stale files).
    assert main(["data", "shapes", "--out", str(out), "--n", "3", "--image-size", "48", "--no-speak"]) == 0
    assert len(list((out / "images").iterdir())) == 3
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main(["data", "shapes", "--out", str(out), "--n", "zero"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n" in err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["data", "shapes", "--out", str(foreign), "--n", "2", "--no-speak"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--n", "2", "--tts-command", "nope-tts {out} {text}",
                 "--tts-cache", str(tmp_path / "tts")]) == 2
    assert "TTS program not found" in capsys.readouterr().err
    # --tts picks the engine's command and voices; --voices still overrides them.
    from omniphi.data.cli import _speaker
    from omniphi.data.tts import FLITE_COMMAND, FLITE_VOICES
    from types import SimpleNamespace
    args = SimpleNamespace(tts="flite", voices=None, tts_command=None, rates=None, seed=0, tts_cache=str(tmp_path / "tts"))
    require_program("flite")
    speaker = _speaker(args)
    assert speaker.command == FLITE_COMMAND and speaker.voices == list(FLITE_VOICES)
    args.voices = "slt"
    assert _speaker(args).voices == ["slt"]
    assert main(["data", "shapes", "--out", str(tmp_path / "y"), "--n", "2", "--voices", "slt"]) == 2
    assert "needs one engine" in capsys.readouterr().err


def test_data_shapes_speaks_by_default_with_the_voices_the_starter_trains_on(tmp_path):
    """`omniphi data shapes` without --tts: both engines, all their voices (the starter build's
    speaker), so a user's fresh split sounds like the starter's training data."""
    from omniphi.cli import build_parser
    from omniphi.data.cli import _speaker
    from omniphi.starter.build import _speaker as starter_speaker

    args = build_parser("data").parse_args(["data", "shapes", "--out", str(tmp_path / "d"), "--n", "2",
                                            "--tts-cache", str(tmp_path / "tts")])
    speaker = _speaker(args)
    assert speaker.command == starter_speaker().command
    assert {v.split(":")[0] for v in speaker.voices} == {"flite", "espeak-ng"}


def test_dialogues_put_the_picture_before_after_or_between_the_first_question(tmp_path):
    """mixed_order: every order occurs, and the loader puts the image part where the placeholder is."""
    from omniphi.data.llava import LlavaDataset
    from omniphi.data.shapes import generate_shapes, write_dialogues

    generate_shapes(tmp_path, n=60, seed=1, image_size=32)
    path = write_dialogues(tmp_path, "train", spoken_fraction=0.0, seed=1, mixed_order=True)
    records = json.loads(path.read_text())
    firsts = [r["conversations"][0]["value"] for r in records]
    assert any(f.startswith("<image>\n") for f in firsts) and any(f.endswith("\n<image>") for f in firsts)
    between = [f for f in firsts if not f.startswith("<image>") and not f.endswith("<image>")]
    assert between and all(f.count("<image>") == 1 for f in firsts)
    dataset = LlavaDataset(path, image_folder=tmp_path)
    kinds = {tuple(p["type"] for p in dataset[i]["messages"][0]["content"]) for i in range(len(dataset))}
    assert {("image", "text"), ("text", "image"), ("text", "image", "text")} <= kinds
    plain = json.loads(write_dialogues(tmp_path, "train", spoken_fraction=0.0, seed=1).read_text())
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in plain)  # the default keeps its layout


def test_single_fraction_splits_some_images_into_one_record_per_question(tmp_path):
    """single_fraction: some images give one record per question, each with its own picture and
    placement (so the picture comes after the question in more answers); every question is still
    asked exactly once, with its own answer."""
    from omniphi.data.shapes import generate_shapes, write_dialogues

    generate_shapes(tmp_path, n=60, seed=2, image_size=32)
    typed = load(tmp_path, "train.json")
    path = write_dialogues(tmp_path, "train", spoken_fraction=0.0, seed=2, mixed_order=True, single_fraction=0.5)
    records = json.loads(path.read_text())
    asked = {}
    for record in records:
        humans = [t["value"] for t in record["conversations"] if t["from"] == "human"]
        answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
        assert humans[0].count("<image>") == 1 and all("<image>" not in h for h in humans[1:])
        for human, answer in zip(humans, answers):
            question = [line for line in human.split("\n") if line and line != "<image>"][-1]  # after any lead-in
            asked.setdefault((record["image"], question), []).append(answer)
    assert sorted(asked) == sorted((r["image"], r["question"]) for r in typed)
    assert all(len(answers) == 1 for answers in asked.values())
    per_image = {}
    for record in records:
        per_image.setdefault(record["image"], []).append(record)
    singles = [image for image, rs in per_image.items() if len(rs) > 1]
    assert 0 < len(singles) < len(per_image)  # both kinds, about half each
    assert len({r["id"] for r in records}) == len(records)
    last = sum(r["conversations"][0]["value"].endswith("<image>") for r in records if r["conversations"][0]["from"] == "human")
    dialogues_only = json.loads(write_dialogues(tmp_path, "train", spoken_fraction=0.0, seed=2, mixed_order=True).read_text())
    last_before = sum(r["conversations"][0]["value"].endswith("<image>") for r in dialogues_only
                      if r["conversations"][0]["from"] == "human")
    assert last > last_before  # more questions with the picture after them
