"""Stage 0 of `make starter`: the scene targets the vision tower learns, and the stage's output."""

import json

import pytest
import torch

from omniphi.data.shapes import POSITIONS, heldout_pairs
from omniphi.starter.vision import (
    IGNORE, WORDS, VisionPretrainSettings, drawn_scenes, mirrored, pretrain_vision, scene_targets, token_layout,
)

SCENE = [{"shape": "star", "colour": "red", "position": "left"},
         {"shape": "circle", "colour": "blue", "position": "top"}]


def test_each_row_of_the_grid_describes_one_region_in_reading_order():
    layout = token_layout(5)
    # Row-major token order: row 0 is "top", row 1 "left", ... one word per token.
    assert [layout[("top", g)] for g in ("position", "colour", "shape", "count", "separator")] == [0, 1, 2, 3, 4]
    assert layout[("left", "colour")] == 6 and layout[("bottom", "shape")] == 22
    assert sorted(layout.values()) == list(range(25))  # every token has a word, none has two
    assert token_layout(6)[("left", "position")] == 6  # wider grids: the extra tokens are left free
    with pytest.raises(ValueError, match="too few tokens per row"):
        token_layout(4)


def word_at(targets, group, index):
    return WORDS[group][targets[group][index]]


def test_scene_targets_read_like_a_caption():
    targets = scene_targets(SCENE, 5)
    layout = token_layout(5)
    caption = []
    for index in range(25):
        named = [g for g in WORDS if targets[g][index] != IGNORE]
        assert len(named) == 1  # each token names exactly one word
        caption.append(word_at(targets, named[0], index))
    assert " ".join(caption) == ("top blue circle two , left red star two , centre empty empty two , "
                                 "right empty empty two , bottom empty empty two ,")
    assert targets["colour"][layout[("top", "shape")]] == IGNORE
def test_mirrored_scene_swaps_left_and_right_only():
    flipped = mirrored(SCENE + [{"shape": "square", "colour": "green", "position": "right"}])
    assert [o["position"] for o in flipped] == ["right", "top", "left"]
    assert [o["shape"] for o in flipped] == ["star", "circle", "square"]


def test_drawn_scenes_never_show_a_held_out_pair():
    held = set(heldout_pairs(0))
    scenes = drawn_scenes(200, seed=0, image_size=32)
    pairs = {(o["colour"], o["shape"]) for _, scene in scenes for o in scene}
    assert pairs and not pairs & held
    assert {o["position"] for _, scene in scenes for o in scene} == set(POSITIONS)


@pytest.mark.slow
def test_pretraining_writes_a_training_output_with_the_tower_and_projector(tmp_path, shapes_small):
    from omniphi.runtime.loading import load_weights
    from omniphi.runtime.trained import read_meta

    out = tmp_path / "vision"
    accuracy = pretrain_vision(shapes_small, out, settings=VisionPretrainSettings(epochs=1, extra_scenes=16, batch_size=16))
    assert set(accuracy) == {"colour", "shape", "empty", "position", "count", "scene", "cosine"}
    meta = read_meta(out)
    assert meta["base"] == "starter-base" and meta["stage"] == "vision"
    assert meta["non_lora_trainables"] and all(n.split(".")[0] in ("vision_tower", "multi_modal_projector")
                                               for n in meta["non_lora_trainables"])
    trained = load_weights(str(out)).model
    base = load_weights("starter-base").model
    name = "vision_tower.embeddings.patch_embedding.weight"
    assert not torch.equal(dict(trained.named_parameters())[name], dict(base.named_parameters())[name])
    assert not torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
    assert torch.equal(trained.audio_projector.linear_1.weight, base.audio_projector.linear_1.weight)  # untouched
    reported = json.loads((out / "omniphi_trained.json").read_text())["eval"]
    assert reported["val_shape_accuracy"] >= 0
    assert 0 <= reported["test_heldout_shape_accuracy"] <= 1 and 0 <= reported["test_seen_shape_accuracy"] <= 1


@pytest.fixture(scope="module")
def shapes_small(tmp_path_factory):
    from omniphi.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("starter-shapes")
    generate_shapes(root, n=30, seed=0, image_size=160)
    return root
