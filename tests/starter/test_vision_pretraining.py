"""Stage 0 of `make starter`: the scene targets the vision tower learns, and the stage's output."""

import json
import math
import random

import pytest
import torch

from omniphi.data.shapes import COLOURS, POSITIONS, heldout_pairs
from omniphi.starter.vision import (
    HELDOUT_COLOUR_MARGIN, IGNORE, WORDS, VisionPretrainSettings, WordHead, drawn_scenes, mirrored, off_palette_fill,
    pretrain_vision, scene_targets, token_layout,
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


def test_an_object_painted_off_the_palette_names_its_shape_but_no_colour():
    targets = scene_targets([{**SCENE[0], "colour": None}, SCENE[1]], 5)
    layout = token_layout(5)
    assert targets["colour"][layout[("left", "colour")]] == IGNORE
    assert word_at(targets, "shape", layout[("left", "shape")]) == "star"
    assert word_at(targets, "colour", layout[("top", "colour")]) == "blue"
    assert word_at(targets, "colour", layout[("centre", "colour")]) == "empty"  # empty regions still say so


def test_off_palette_fills_span_hues_and_brightness_but_keep_away_from_the_colours_to_avoid():
    rng = random.Random(0)
    yellow = COLOURS["yellow"]
    fills = [off_palette_fill(rng, [yellow]) for _ in range(500)]
    assert min(math.dist(f, yellow) for f in fills) >= HELDOUT_COLOUR_MARGIN
    assert len(set(fills)) > 400
    for channel in range(3):  # every channel from dark to bright: not a few fixed tints
        assert min(f[channel] for f in fills) < 60 and max(f[channel] for f in fills) > 220


def test_recoloured_drawn_scenes_are_the_last_share_and_never_paint_a_shape_in_its_held_out_colour():
    scenes = drawn_scenes(40, seed=0, image_size=160, recoloured_fraction=0.25)
    named = [all(o["colour"] is not None for o in scene) for _, scene in scenes]
    assert named == [True] * 30 + [False] * 10
    held_colour = {shape: COLOURS[colour] for colour, shape in heldout_pairs(0)}
    for image, scene in scenes[30:]:
        for obj in scene:  # the pixel at the region's centre lies inside its object (jitter < the inner radius)
            x, y = POSITIONS[obj["position"]]
            fill = image.getpixel((round(x * 159), round(y * 159)))
            assert math.dist(fill, held_colour[obj["shape"]]) >= HELDOUT_COLOUR_MARGIN - 2  # 2: rounding


def test_render_scene_paints_the_given_fills():
    from omniphi.data.shapes import Shape, render_scene

    square = Shape("square", "red", "centre", radius=0.12, dx=0.0, dy=0.0, angle=0.0)
    image = render_scene([square], 64, random.Random(0), fills=[(10, 200, 10)])
    assert image.getpixel((32, 32)) == (10, 200, 10)
    with pytest.raises(ValueError, match="1 objects"):
        render_scene([square], 64, random.Random(0), fills=[])


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


def test_the_colour_bias_holds_each_colours_missing_shape_and_nothing_about_empty_regions():
    from omniphi.starter.vision import colour_shape_log_ratio

    scenes = [scene for _, scene in drawn_scenes(600, seed=0, image_size=32, recoloured_fraction=0.25)]
    ratio = colour_shape_log_ratio(scenes)
    for colour, shape in heldout_pairs(0):  # never seen together: far less likely than the shape's average
        assert ratio[WORDS["colour"].index(colour), WORDS["shape"].index(shape)] < -2
    seen = [(c, s) for c in WORDS["colour"][1:] for s in WORDS["shape"][1:] if (c, s) not in set(heldout_pairs(0))]
    assert all(abs(ratio[WORDS["colour"].index(c), WORDS["shape"].index(s)]) < 1 for c, s in seen)
    assert not ratio[0].any() and not ratio[:, 0].any()  # empty against occupied is the tower's to learn


def test_the_colour_bias_sits_on_the_shape_token_of_the_region_whose_colour_is_named():
    from omniphi.starter.vision import colour_shape_bias

    ratio = torch.arange(len(WORDS["colour"]) * len(WORDS["shape"]), dtype=torch.float).view(len(WORDS["colour"]), -1)
    targets = {k: v[None] for k, v in scene_targets([SCENE[0], {**SCENE[1], "colour": None}], 5).items()}
    bias = colour_shape_bias(targets, ratio, 5)[0]
    layout = token_layout(5)
    assert torch.equal(bias[layout[("left", "shape")]], ratio[WORDS["colour"].index("red")])
    assert not bias[layout[("top", "shape")]].any()  # an off-palette object: no colour, no bias
    assert torch.equal(bias[layout[("centre", "shape")]], ratio[0])  # an empty region: the "empty" row
    others = [i for i in range(25) if i not in {layout[(r, "shape")] for r in POSITIONS}]
    assert not bias[others].any()


def test_the_shape_bias_enters_only_the_shape_cross_entropy():
    head = object.__new__(WordHeadForTest)
    cos = {g: torch.zeros(1, 25, len(w)) for g, w in WORDS.items()}
    targets = {k: v[None] for k, v in scene_targets(SCENE, 5).items()}
    layout = token_layout(5)
    bias = torch.zeros(1, 25, len(WORDS["shape"]))
    plain = WordHeadForTest.loss(head, cos, targets)
    star = WORDS["shape"].index("star")
    bias[0, layout[("left", "shape")], star] = 10.0  # the colour model already says "star": less to learn
    assert WordHeadForTest.loss(head, cos, targets, bias) < plain
    bias[0, layout[("left", "colour")], :] = 10.0  # a bias at a colour token is not read
    bias[0, layout[("left", "shape")], star] = 0.0
    assert torch.isclose(WordHeadForTest.loss(head, cos, targets, bias), plain)


class WordHeadForTest(WordHead):
    """WordHead's loss without a language model behind it (a fixed scale of 1)."""

    def scale(self):
        return torch.tensor(1.0)


def test_the_fresh_heldout_bench_draws_half_its_pictures_with_a_held_out_pair():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "vision_heldout.py"
    spec = importlib.util.spec_from_file_location("vision_heldout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    held = set(heldout_pairs(0))
    items = bench.fresh_scenes(20, held, data_seed=0, image_size=64)
    with_held = [any((o["colour"], o["shape"]) in held for o in scene) for _, scene in items]
    assert all(with_held[0::2])
