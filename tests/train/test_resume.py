"""N steps straight == N/2 steps, a "kill", then --resume for the rest: the same weights, for LoRA and QLoRA."""

import json

import pytest
import torch
from safetensors.torch import load_file

from omniphi.train.recipe import RecipeError
from omniphi.train.trainer import last_checkpoint
from tests.train.conftest import FIXTURES, make_recipe, read_log, train

FILES = ("adapter/adapter_model.safetensors", "non_lora_trainables.safetensors")


def recipe(output_dir, shapes, quantize, **training):
    return make_recipe(
        "instruct", output_dir,
        [{"format": "llava", "path": str(shapes / "train.json")},
         {"format": "llava", "path": str(FIXTURES / "llava" / "spoken.json"), "image_folder": str(FIXTURES),
          "audio_folder": str(FIXTURES)}],
        model={"base": "tiny", "quantize": quantize},
        # LoRA dropout on: the resumed run must also restore the RNG, not just the weights.
        lora={"r": 8, "alpha": 16, "dropout": 0.1},
        # 38 samples, 2 × 2 per step: 10 steps per epoch, so the resume lands mid-epoch (data skipping)
        training={"max_steps": 6, "grad_accum": 2, "warmup_ratio": 0.2, "projector_lr": 1e-4, **training},
    )


def weights(directory):
    return {f: load_file(str(directory / f)) for f in FILES}


@pytest.mark.parametrize("quantize", [None, "nf4"], ids=["lora", "qlora"])
def test_resume_gives_the_same_weights(tmp_path, shapes, quantize):
    straight = tmp_path / "straight"
    train(recipe(straight, shapes, quantize))

    resumed = tmp_path / "resumed"
    first = train(recipe(resumed, shapes, quantize, stop_after_steps=3))
    assert not first.complete and first.global_step == 3
    assert not (resumed / "omniphi_trained.json").exists()  # no final output from an interrupted run
    assert last_checkpoint(resumed).endswith("checkpoint-3")
    # A new run into the same directory without --resume is refused, not silently restarted.
    with pytest.raises(RecipeError, match="--resume"):
        train(recipe(resumed, shapes, quantize))
    second = train(recipe(resumed, shapes, quantize), resume=True)
    assert second.complete and second.global_step == 6 and second.checkpoint.endswith("checkpoint-3")

    a, b = weights(straight), weights(resumed)
    halfway = weights(resumed / "checkpoint-3")
    for name in FILES:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(b[name][key], a[name][key], rtol=0, atol=1e-6)
        # ...and the comparison is not vacuous: training moved the weights after the checkpoint.
        assert any(not torch.allclose(halfway[name][k], a[name][k]) for k in a[name])

    # The log reads as one run: each step once, same losses as the straight run.
    def losses(d):
        return [(r["step"], round(r["loss"], 5)) for r in read_log(d) if r["type"] == "train"]

    assert losses(resumed) == losses(straight)


def test_incomplete_checkpoint_is_not_resumed_from(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({}))
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: no trainer_state.json
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")
