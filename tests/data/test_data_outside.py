"""Pictures outside the shapes world, answered with one honest sentence (omniphi/data/outside.py)."""

import json
import random

import numpy as np
from PIL import Image

from omniphi.data import outside
from omniphi.data.shapes import OUT_OF_WORLD_ANSWER


def test_no_held_out_photo_is_trained_on_and_all_ship_with_scikit_image():
    import skimage.data

    assert not set(outside.TRAIN_PHOTOS) & set(outside.TEST_PHOTOS)
    for name in (*outside.TRAIN_PHOTOS, *outside.TEST_PHOTOS):
        assert getattr(skimage.data, name)().size > 0  # bundled: no download


def test_write_outside_pairs_every_picture_with_the_honest_answer(tmp_path):
    counts = outside.write_outside(tmp_path, n_train=10, n_test=5, seed=3)
    assert counts == {"train": 10, "test": 5}
    train = json.loads((tmp_path / "outside_train.json").read_text())
    test = [json.loads(line) for line in (tmp_path / "outside_test.jsonl").read_text().splitlines()]
    assert {r["conversations"][1]["value"] for r in train} == {OUT_OF_WORLD_ANSWER}
    orders = {r["conversations"][0]["value"].startswith("<image>") for r in train}
    assert orders == {True, False}  # the picture before and after the question
    assert {r["kind"] for r in train} == {"photo", *outside.DRAWINGS}
    for record in train + test:
        image = Image.open(tmp_path / record["image"])
        assert image.size == (outside.IMAGE_SIZE, outside.IMAGE_SIZE) and image.mode == "RGB"
    again = tmp_path / "again"
    outside.write_outside(again, n_train=10, n_test=5, seed=3)
    assert (again / train[0]["image"]).read_bytes() == (tmp_path / train[0]["image"]).read_bytes()


def test_the_eval_counts_the_honest_sentence_and_nothing_else():
    """outside_test.jsonl is scored by `omniphi eval --task qa` (reference contained in the answer)."""
    from omniphi.eval.tasks import Item, _score_qa

    item = Item(id="x", references=[outside.HONEST_CORE], question="What colour is the circle?")
    assert _score_qa(item, OUT_OF_WORLD_ANSWER)["contains"]
    assert not _score_qa(item, "Red.")["contains"]
    assert not _score_qa(item, "I was trained on many pictures.")["contains"]


def test_drawings_differ_from_one_seed_to_the_next():
    for kind in outside.DRAWINGS:
        a = np.asarray(outside.outside_picture(kind, random.Random(1), outside.TRAIN_PHOTOS))
        b = np.asarray(outside.outside_picture(kind, random.Random(2), outside.TRAIN_PHOTOS))
        assert a.shape == (outside.IMAGE_SIZE, outside.IMAGE_SIZE, 3) and not np.array_equal(a, b)
