from pathlib import Path

import pytest

from omniphi.train.cli import split_options
from omniphi.train.recipe import RecipeError, load_recipe, parse_overrides

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

BASE = {
    "stage": "instruct",
    "model": {"base": "tiny"},
    "lora": {"r": 8, "alpha": 16},
    "data": {"train": [{"format": "llava", "path": "a.json"}]},
    "training": {"output_dir": "runs/x", "learning_rate": "1e-3"},
}


def test_yaml_strings_are_coerced_to_field_types(tmp_path):
    path = tmp_path / "r.yaml"
    # PyYAML reads 1e-3 as a string and 'true' for an auto-or-bool field must become a bool.
    path.write_text("stage: align\ndata: {train: [{format: llava_plain, path: c.json, limit: '5'}]}\n"
                    "training: {output_dir: o, learning_rate: 1e-3, bf16: true, global_batch_size: 256}\n")
    recipe = load_recipe(path)
    assert recipe.training.learning_rate == pytest.approx(1e-3)
    assert recipe.training.bf16 is True
    assert recipe.data.train[0].limit == 5 and recipe.data.train[0].format == "llava_plain"
    assert recipe.lora is None and recipe.train_modules == "auto"


def test_overrides_dotted_short_list_and_null():
    overrides = parse_overrides(["--lora.r", "4", "--learning_rate=2e-5", "--data.train.0.path", "b.json",
                                 "--max-steps", "7", "--train_modules", "multi_modal_projector,vision_tower"])
    recipe = load_recipe(BASE, overrides)
    assert recipe.lora.r == 4 and recipe.lora.alpha == 16
    assert recipe.training.learning_rate == pytest.approx(2e-5)
    assert recipe.data.train[0].path == "b.json"
    assert recipe.training.max_steps == 7
    assert recipe.train_modules == "multi_modal_projector,vision_tower"
    assert load_recipe(BASE, parse_overrides(["--lora", "null", "--stage", "align"])).lora is None
    # LoRA fields on a recipe without LoRA start from the defaults.
    no_lora = {**BASE, "lora": None, "stage": "text"}
    assert load_recipe(no_lora, parse_overrides(["--lora.r", "2"])).lora.alpha == 16


@pytest.mark.parametrize("overrides,needle", [
    (["--learning_rat", "1"], "unknown recipe key"),
    (["--path", "x"], "unknown recipe key"),  # only fields outside lists have short names
    (["--dropout", "x"], "lora.dropout: expected a number"),
    (["--training.nope", "1"], "unknown key training.nope"),
    (["--stage", "align"], "align stage trains projectors"),
    (["--model.quantize", "nf8"], "expected one of"),
    (["--model.quantize", "nf4", "--lora", "null"], "it needs lora"),
    (["--global_batch_size", "64", "--grad_accum", "2"], "not both"),
    (["--lora"], "needs a value"),
])
def test_bad_overrides_are_errors_naming_the_key(overrides, needle):
    with pytest.raises(RecipeError, match=needle):
        load_recipe(BASE, parse_overrides(overrides))


def test_resume_and_print_recipe_are_pulled_from_overrides():
    assert split_options(["--resume", "--lr", "1"]) == (True, False, ["--lr", "1"])
    assert split_options(["--lr", "1", "--resume", "runs/x/checkpoint-4"]) == ("runs/x/checkpoint-4", False, ["--lr", "1"])
    assert split_options(["--print-recipe", "--resume=ck"]) == ("ck", True, [])


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.training.output_dir.startswith("runs/")


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES.glob("*.yaml")}
    assert {"phi2-text-qlora.yaml", "phi2-stage1-align.yaml", "phi2-audio-words.yaml", "phi2-audio-align.yaml",
            "phi2-stage2-qlora.yaml", "shapes-align.yaml", "shapes-instruct.yaml", "shapes-tiny-smoke.yaml"} <= names
    stage1 = load_recipe(RECIPES / "phi2-stage1-align.yaml")
    assert (stage1.training.learning_rate, stage1.training.global_batch_size, stage1.training.epochs,
            stage1.training.warmup_ratio, stage1.training.lr_scheduler) == (1e-3, 256, 1.0, 0.03, "cosine")
    # The Phi-2 chain spells speech as word embeddings before it transcribes (the audio_words stage)
    words, audio = load_recipe(RECIPES / "phi2-audio-words.yaml"), load_recipe(RECIPES / "phi2-audio-align.yaml")
    assert (words.stage, words.model.base, audio.model.base) == ("audio_words", stage1.training.output_dir,
                                                                 words.training.output_dir)
    stage2 = load_recipe(RECIPES / "phi2-stage2-qlora.yaml")
    assert (stage2.lora.r, stage2.lora.alpha, stage2.training.learning_rate, stage2.training.projector_lr,
            stage2.model.quantize) == (128, 256, 2e-4, 2e-5, "nf4")
