"""Each benchmark loader on its committed fixture (published layouts and fields)."""

import json
import shutil

import pytest

from omniphi.eval.tasks import MME_SUFFIX, SHORT_ANSWER, EvalError, LoadOptions, find_image, get_task
from tests.eval.helpers import EVAL, LIBRISPEECH


def load(task, path, **options):
    return get_task(task).load(path, LoadOptions(**options))


def test_find_image_falls_back_to_another_extension(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "COCO_1.png").write_bytes(b"x")
    assert find_image("COCO_1.jpg", [None, tmp_path / "a", tmp_path / "b"]) == tmp_path / "b" / "COCO_1.png"
    assert find_image("gone.jpg", [tmp_path / "a", tmp_path / "b"]) == tmp_path / "a" / "gone.jpg"


def test_vqav2(tmp_path):
    items = load("vqav2", EVAL / "vqav2")
    assert [i.id for i in items] == ["42000", "42001", "73000", "73001", "74000"]
    assert all(len(i.references) == 10 and i.image.is_file() for i in items)
    assert items[0].image.name == "COCO_val2014_000000000042.png"
    assert items[2].prompt == "How many circles are there?\n" + SHORT_ANSWER
    assert items[2].meta["answer_type"] == "number"
    assert len(load("vqav2", EVAL / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json", limit=2)) == 2
    # without annotations (a test split) there is nothing to score against
    shutil.copy(EVAL / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json", tmp_path)
    with pytest.raises(EvalError, match="annotations"):
        load("vqav2", tmp_path)


def test_gqa():
    items = load("gqa", EVAL / "gqa" / "testdev_balanced_questions.json")
    assert len(items) == 4 and all(i.image.is_file() for i in items)
    assert items[0].references == ["yellow"] and items[0].question == "What color is the ball?"
    assert [i.meta["structural"] for i in items] == ["query", "verify", "logical", "choose"]


def test_textvqa():
    items = load("textvqa", EVAL / "textvqa" / "TextVQA_0.5.1_val.json")
    assert [i.id for i in items] == ["34602", "34603", "34604"]
    assert all(len(i.references) == 10 for i in items)
    assert items[1].image == EVAL / "textvqa" / "train_images" / "003a8ae2ef43b901.png"


def test_pope_file_and_folder(tmp_path):
    folder = load("pope", EVAL / "pope")
    assert len(folder) == 8
    assert folder[0].id == "adversarial/1" and folder[0].meta["split"] == "adversarial"
    assert all(i.image.is_file() and i.references[0] in ("yes", "no") for i in folder)
    single = load("pope", EVAL / "pope" / "coco_pope_random.json")
    assert [i.id for i in single] == ["1", "2", "3", "4"]
    assert single[1].question == "Is there a giraffe in the image?" and single[1].references == ["no"]
    bad = tmp_path / "coco_pope_bad.json"
    bad.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Is there?", "label": "maybe"}) + "\n")
    with pytest.raises(EvalError, match="label"):
        load("pope", bad)


def test_scienceqa_keeps_image_questions_of_the_split():
    items = load("scienceqa", EVAL / "scienceqa")
    assert [i.id for i in items] == ["5", "12"]  # "9" has no image
    assert all(i.image.is_file() for i in items)
    assert items[1].references == ["C"]
    assert items[1].prompt == ("Context: The map shows part of Europe.\nWhich country is highlighted?\n"
                               "A. France\nB. Spain\nC. Italy\n"
                               "Answer with the option's letter from the given choices directly.")
    assert items[0].before == ""  # no hint, no context line
    assert items[1].meta["grade"] == "G7-12" and items[0].meta["subject"] == "natural science"
    assert [i.id for i in load("scienceqa", EVAL / "scienceqa", split="val")] == ["20"]


def test_mme_both_layouts():
    root = EVAL / "mme" / "MME_Benchmark_release_version"
    items = load("mme", root)
    assert len(items) == 8
    assert {i.meta["category"] for i in items} == {"artwork", "existence", "numerical_calculation"}
    assert all(i.image.is_file() for i in items)
    art = [i for i in items if i.meta["category"] == "artwork"]
    assert art[0].image == root / "artwork" / "images" / "10002.png"
    assert art[0].question == "Is this artwork created by Vincent van Gogh?" and art[0].after == " " + MME_SUFFIX
    assert [i.references[0] for i in art] == ["Yes", "No"]
    assert len({i.meta["image_key"] for i in items}) == 4
    assert len(load("mme", root / "artwork")) == 2  # one category folder on its own


def test_asr_librispeech_and_manifest():
    libri = load("asr", LIBRISPEECH / "LibriSpeech")
    assert [i.id for i in libri] == ["1272-128104-0000", "1272-128104-0001"]
    assert libri[0].references == ["MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES"]
    assert libri[0].audio.is_file() and libri[0].after == "Transcribe the audio."
    manifest = load("asr", LIBRISPEECH / "manifest.jsonl")
    assert [i.id for i in manifest] == ["quilter", "1272-128104-0001", "ghost"]
    assert not manifest[2].audio.exists()  # reported as skipped by the runner


def test_qa_and_text():
    items = load("qa", EVAL / "qa" / "questions.jsonl")
    assert [i.id for i in items] == ["capital", "spider", "sky"]
    assert items[1].references == ["eight", "8"] and items[1].image is None
    text = load("perplexity", EVAL / "perplexity" / "lighthouse.txt")
    assert text[0].question.startswith("The history of the lighthouse")


def test_shapes_test_split_with_spoken_questions(shapes_dir):
    records = json.loads((shapes_dir / "test.json").read_text())
    items = load("shapes", shapes_dir)
    assert [i.id for i in items] == [r["id"] for r in records]
    assert [i.references[0] for i in items] == [r["answer"] for r in records]
    assert all(i.image.is_file() and i.audio is not None and i.audio.is_file() for i in items)
    assert {i.meta["question_type"] for i in items} <= {"colour", "shape", "count", "position", "yesno"}
    with pytest.raises(EvalError, match="not a shapes dataset"):
        load("shapes", EVAL / "vqav2")
