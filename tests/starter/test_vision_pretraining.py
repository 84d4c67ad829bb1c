"""Stage 0 of `make starter`: the scene targets the vision tower learns, and the stage's output."""

import json

import pytest
import torch

from omniphi.data.shapes import POSITIONS, heldout_pairs
from omniphi.starter.vision import (
    COLOUR_CLASSES, COUNT_CLASSES, IGNORE, POSITION_CLASSES, SHAPE_CLASSES, VisionPretrainSettings, drawn_scenes, mirrored,
    pretrain_vision, region_patches, scene_targets,
)

SCENE = [{"shape": "star", "colour": "red", "position": "left"},
         {"shape": "circle", "colour": "blue", "position": "top"}]


def test_each_region_owns_one_patch_of_the_starters_grid():
    patches = region_patches(5)
    # Row-major token order: top is row 0, column 2; left is row 2, column 0.
    assert patches == {"left": 10, "right": 14, "top": 2, "bottom": 22, "centre": 12}
    with pytest.raises(ValueError, match="two shapes regions in one patch"):
        region_patches(2)


def test_scene_targets_name_each_regions_object_and_the_count():
    targets = scene_targets(SCENE, 5)
    patches = region_patches(5)
    assert COLOUR_CLASSES[targets["colour"][patches["left"]]] == "red"
    assert SHAPE_CLASSES[targets["shape"][patches["left"]]] == "star"
    assert SHAPE_CLASSES[targets["shape"][patches["top"]]] == "circle"
    assert SHAPE_CLASSES[targets["shape"][patches["centre"]]] == "none"
    others = [i for i in range(25) if i not in patches.values()]
    assert (targets["colour"][others] == IGNORE).all()  # only region patches have attribute targets
    assert (targets["count"] == COUNT_CLASSES.index(2)).all()  # every token knows the count
    assert POSITION_CLASSES[targets["position"][patches["bottom"]]] == "bottom"


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
    from omniphi import presets
    from omniphi.train.outputs import read_meta

    out = tmp_path / "vision"
    accuracy = pretrain_vision(shapes_small, out, settings=VisionPretrainSettings(epochs=1, extra_scenes=16, batch_size=16))
    assert set(accuracy) == {"colour", "shape", "empty", "position", "count", "scene"}
    meta = read_meta(out)
    assert meta["base"] == "starter-base" and meta["stage"] == "vision"
    assert meta["non_lora_trainables"] and all(n.split(".")[0] in ("vision_tower", "multi_modal_projector")
                                               for n in meta["non_lora_trainables"])
    trained = presets.load(str(out)).model
    base = presets.load("starter-base").model
    name = "vision_tower.embeddings.patch_embedding.weight"
    assert not torch.equal(dict(trained.named_parameters())[name], dict(base.named_parameters())[name])
    assert not torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
    assert torch.equal(trained.audio_projector.linear_1.weight, base.audio_projector.linear_1.weight)  # untouched
    assert json.loads((out / "omniphi_trained.json").read_text())["eval"]["val_shape_accuracy"] >= 0


@pytest.fixture(scope="module")
def shapes_small(tmp_path_factory):
    from omniphi.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("starter-shapes")
    generate_shapes(root, n=30, seed=0, image_size=160)
    return root
