"""One short run of each stage on the tiny preset; an overfit run that must learn."""

import json

import pytest
import torch
from safetensors.torch import load_file

from omniphi import runtime
from tests.train.conftest import FIXTURES, make_recipe, read_log, train, train_losses


def base_state():
    return {k: v.clone() for k, v in runtime.load("tiny").model.state_dict().items()}


def changed_modules(output_dir, base):
    """Top-level modules whose weights differ from the base after loading the (merged) output."""
    loaded = runtime.load(str(output_dir)).model.state_dict()
    return {k.split(".")[0] for k, v in loaded.items() if k in base and not torch.equal(v, base[k])}


def meta(output_dir):
    return json.loads((output_dir / "omniphi_trained.json").read_text())


def test_text_stage_lora(tmp_path, text_corpus):
    out = tmp_path / "text-lora"
    result = train(make_recipe("text", out, [{"format": "text", "path": str(text_corpus)}],
                               lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    assert result.complete and result.global_step == 4
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "non_lora_trainables.safetensors").exists()  # nothing but the adapter trained
    assert meta(out)["stage"] == "text" and meta(out)["base"] == "tiny"
    assert changed_modules(out, base_state()) == {"language_model"}


def test_text_stage_from_scratch_with_checkpointing(tmp_path, text_corpus):
    out = tmp_path / "scratch"
    recipe = make_recipe("text", out, [{"format": "text", "path": str(text_corpus)}],
                         model={"base": "tiny", "init": "scratch", "text_config": {"num_hidden_layers": 1}},
                         training={"gradient_checkpointing": True, "learning_rate": 3e-3, "max_steps": 6})
    result = train(recipe)
    assert result.trainer.model.language_model.model.gradient_checkpointing
    losses = train_losses(out)
    assert losses[-1] < losses[0]
    loaded = runtime.load(str(out)).model
    assert len(loaded.language_model.model.layers) == 1
    saved = load_file(str(out / "non_lora_trainables.safetensors"))
    assert all(k.startswith("language_model.") for k in saved)
    torch.testing.assert_close(loaded.language_model.model.embed_tokens.weight,
                               saved["language_model.model.embed_tokens.weight"])


def test_align_stage_vision_projector_and_unfrozen_tower(tmp_path, shapes):
    out = tmp_path / "align-vision"
    result = train(make_recipe("align", out, [{"format": "llava_plain", "path": str(shapes / "captions.json")}],
                               train_modules=["multi_modal_projector", "vision_tower"],
                               training={"max_steps": 3, "tower_lr": 1e-4}))
    assert result.complete
    assert sorted({k.split(".")[0] for k in load_file(str(out / "non_lora_trainables.safetensors"))}) == [
        "multi_modal_projector", "vision_tower"]
    assert changed_modules(out, base_state()) == {"multi_modal_projector", "vision_tower"}
    lrs = [(r["lr_projector"], r["lr_tower"]) for r in read_log(out) if r["type"] == "train"]
    assert lrs[0] == pytest.approx((1e-3, 1e-4))


def test_align_stage_audio_on_asr_data_counts_missing_audio(tmp_path):
    out = tmp_path / "align-audio"
    train_sources = [
        {"format": "asr_manifest", "path": str(FIXTURES / "librispeech" / "manifest.jsonl")},  # has a missing file
        {"format": "librispeech", "path": str(FIXTURES / "librispeech" / "LibriSpeech")},
    ]
    result = train(make_recipe("align", out, train_sources, train_modules=["audio_projector"],
                               training={"max_steps": 3}))
    assert result.complete
    assert changed_modules(out, base_state()) == {"audio_projector"}
    assert meta(out)["skipped_samples"]["by_reason"].get("missing_audio", 0) >= 1
    assert [r["skipped"] for r in read_log(out) if r["type"] == "train"][-1] >= 1


def test_instruct_stage_qlora_images_and_speech_with_eval_and_plots(tmp_path, shapes):
    out = tmp_path / "instruct"
    train_sources = [
        {"format": "llava", "path": str(shapes / "train.json")},
        {"format": "llava", "path": str(FIXTURES / "llava" / "spoken.json"), "image_folder": str(FIXTURES),
         "audio_folder": str(FIXTURES)},
    ]
    recipe = make_recipe(
        "instruct", out, train_sources, model={"base": "tiny", "quantize": "nf4"},
        lora={"r": 8, "alpha": 16, "dropout": 0.05},
        data={"eval": [{"format": "llava", "path": str(shapes / "val.json")}], "group_by_length": True},
        training={"max_steps": 4, "grad_accum": 2, "projector_lr": 1e-4, "eval_steps": 2, "plots": True,
                  "save_steps": 2, "gradient_checkpointing": True},
    )
    result = train(recipe)
    assert result.complete
    assert result.trainer.model.language_model.base_model.model.model.gradient_checkpointing
    log = read_log(out)
    evals = [r for r in log if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_loss"] > 0 for r in evals)
    steps = [r for r in log if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["lr_projector"] == pytest.approx(r["lr_llm"] / 10) for r in steps)  # separate projector lr
    assert steps[0]["lr_llm"] == pytest.approx(1e-3)  # no warmup in this recipe: step 1 runs at the peak
    assert (out / "plots" / "loss.png").stat().st_size > 1000 and (out / "plots" / "lr.png").is_file()
    m = meta(out)
    assert m["quantization"] == "nf4" and m["has_adapter"] and m["lora"]["r"] == 8
    assert sorted(m["non_lora_trainables"])[0].startswith("audio_projector")
    assert (out / "checkpoint-2" / "omniphi_trained.json").is_file()
    # Spoken samples are the longest, so grouping by length puts them in the first batch: both
    # projectors received gradients; the towers stayed frozen.
    changed = changed_modules(out, base_state())
    assert {"audio_projector", "multi_modal_projector"} <= changed
    # LoRA's B starts at zero: non-zero means gradients reached the adapters through the 4-bit,
    # checkpointed LLM.
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all("embed" not in k and "lm_head" not in k for k in adapter)
    assert max(v.abs().max() for k, v in adapter.items() if "lora_B" in k) > 0
    assert not changed & {"vision_tower", "audio_tower"}
    assert (out / "recipe.yaml").read_text().startswith("stage: instruct")


def test_overfits_a_tiny_fixed_set(tmp_path, shapes):
    """Four samples, full LLM + projectors: the answer loss must collapse. (LoRA on the random tiny
    LLM cannot: its frozen random head bounds the logits; the LoRA runs above only check plumbing.)"""
    out = tmp_path / "overfit"
    recipe = make_recipe("instruct", out, [{"format": "llava", "path": str(shapes / "train.json"), "limit": 4}],
                         training={"max_steps": 25, "batch_size": 4, "learning_rate": 3e-3, "projector_lr": 1e-3,
                                   "lr_scheduler": "constant"})
    train(recipe)
    losses = train_losses(out)
    assert losses[0] > 5.0
    assert losses[-1] < 0.3 * losses[0], losses


def spoken_manifest(tmp_path):
    """Four clips with their transcripts (the speech fixtures and two LibriSpeech utterances)."""
    speech = FIXTURES / "speech"
    rows = [{"audio": str(speech / "capital.wav"), "text": "What is the capital of France?"},
            {"audio": str(speech / "fox.wav"), "text": "The quick brown fox jumps over the lazy dog."}]
    rows += [json.loads(line) for line in (FIXTURES / "librispeech" / "manifest.jsonl").read_text().splitlines()[:2]]
    for row in rows[2:]:
        row["audio"] = str(FIXTURES / "librispeech" / row["audio"])
    path = tmp_path / "spoken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_audio_words_stage_trains_only_the_audio_projector_and_its_loss_falls(tmp_path):
    """The audio word-spelling stage (CTC of the audio tokens against the LLM's word embeddings) on
    any recipe's ASR data: only the audio projector changes, the loss goes down, the output loads."""
    out = tmp_path / "audio-words"
    manifest = spoken_manifest(tmp_path)
    recipe = make_recipe("audio_words", out, [{"format": "asr_manifest", "path": str(manifest)}],
                         audio_words={"negatives": 64},
                         training={"max_steps": 40, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1})
    recipe["data"]["eval"] = [{"format": "asr_manifest", "path": str(manifest), "limit": 2}]
    result = train(recipe)
    assert result.complete and result.global_step == 40
    losses = train_losses(out)
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert changed_modules(out, base_state()) == {"audio_projector"}
    assert meta(out)["stage"] == "audio_words" and 0 <= meta(out)["eval"]["val_spelling_cosine"] <= 1


@pytest.mark.parametrize("change, problem", [
    ({"lora": {"r": 4}}, "audio projector only"),
    ({"train_modules": ["audio_projector", "multi_modal_projector"]}, "audio projector only"),
    ({"data": {"train": [{"format": "llava", "path": "x.json"}]}}, "speech with transcripts"),
])
def test_audio_words_recipe_refuses_what_the_stage_cannot_do(tmp_path, change, problem):
    from omniphi.train.recipe import RecipeError, load_recipe

    recipe = make_recipe("audio_words", tmp_path / "x", [{"format": "asr_manifest", "path": "m.jsonl"}], **change)
    with pytest.raises(RecipeError, match=problem):
        load_recipe(recipe)


def test_audio_words_without_the_frame_cache_trains_the_same(tmp_path):
    """cache_frames: false (a corpus too large to keep Whisper's frames) decodes and encodes each
    batch again: the same losses as with the cache, only slower."""
    manifest = spoken_manifest(tmp_path)
    losses = {}
    for cache in (True, False):
        out = tmp_path / f"cache-{cache}"
        train(make_recipe("audio_words", out, [{"format": "asr_manifest", "path": str(manifest)}],
                          audio_words={"negatives": 32, "cache_frames": cache},
                          training={"max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1}))
        losses[cache] = train_losses(out)
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_omniphi_train_runs_the_audio_words_stage(tmp_path, capsys):
    import yaml

    from omniphi.cli import main

    out = tmp_path / "run"
    recipe = make_recipe("audio_words", out, [{"format": "asr_manifest", "path": str(spoken_manifest(tmp_path))}],
                         audio_words={"negatives": 16}, training={"max_steps": 2, "batch_size": 2})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    assert f"trained 2 steps; model in {out}" in capsys.readouterr().out
    assert (out / "omniphi_trained.json").is_file()
