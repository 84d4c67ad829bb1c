"""The training output: loads in `omniphi ask`, merges to a full model with the same logits, guards its base."""

import json

import pytest
import torch
from PIL import Image

from omniphi import runtime
from omniphi.cli import main as omniphi_main
from omniphi.runtime.loading import load_weights
from omniphi.runtime.trained import TrainedOutputError
from tests.train.conftest import FIXTURES, ROOT, make_recipe, run_module, train

CONVERSATION = [
    {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 30), (200, 20, 20))},
                                 {"type": "text", "text": "What colour is the circle?"}]},
    {"role": "assistant", "content": "Red."},
]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, shapes):
    out = tmp_path_factory.mktemp("qlora") / "run"
    result = train(make_recipe("instruct", out, [{"format": "llava", "path": str(shapes / "train.json")}],
                               model={"base": "tiny", "quantize": "nf4"}, lora={"r": 8, "alpha": 16, "dropout": 0.0},
                               training={"max_steps": 3, "learning_rate": 5e-3}))
    return out, result


def logits(model, processor):
    batch = processor([CONVERSATION])
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_merge_gives_the_adapter_models_logits(qlora_run, tmp_path):
    out, result = qlora_run
    processor = runtime.load("tiny").processor
    trained = logits(result.trainer.model, processor)  # the 4-bit LLM + LoRA as it trained
    adapter = load_weights(str(out), merge=False)  # rebuilt from the output: base → NF4 round trip → adapter
    from peft import PeftModel

    assert isinstance(adapter.model.language_model, PeftModel)
    adapter_logits = logits(adapter.model, processor)
    torch.testing.assert_close(adapter_logits, trained, atol=1e-5, rtol=1e-5)

    assert omniphi_main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged = runtime.load(str(tmp_path / "merged"), dtype="float32")
    assert not (tmp_path / "merged" / "adapter").exists()  # a plain full model directory
    assert type(merged.model.language_model).__name__ == "PhiForCausalLM"
    torch.testing.assert_close(logits(merged.model, processor), adapter_logits, atol=1e-5, rtol=1e-5)
    base = logits(runtime.load("tiny").model, processor)
    assert (base - adapter_logits).abs().max() > 1e-2  # training changed the model: the check is not vacuous
    assert json.loads((tmp_path / "merged" / "merged_from.json").read_text())["quantization"] == "nf4"


def test_output_refuses_a_changed_base(qlora_run, tmp_path, monkeypatch):
    import shutil

    out, _ = qlora_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    meta = json.loads((copy / "omniphi_trained.json").read_text())
    meta["base_fingerprint"] = "0" * 16
    (copy / "omniphi_trained.json").write_text(json.dumps(meta))
    with pytest.raises(TrainedOutputError, match="trained on a different 'tiny'"):
        runtime.load(str(copy))
    monkeypatch.setenv("OMNIPHI_SKIP_BASE_CHECK", "1")
    runtime.load(str(copy))


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    assert omniphi_main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: instruct\ndata: {train: [{format: llava, path: x.json}]}\ntraining: {output_dir: o}\n")
    assert omniphi_main(["train", str(recipe), "--lora.rank", "8"]) == 2
    assert "unknown key lora.rank" in capsys.readouterr().err


def test_cli_train_then_ask_loads_the_output(tmp_path, shapes):
    """`omniphi train RECIPE --overrides` and `omniphi ask --model DIR`, as a user runs them."""
    out = tmp_path / "cli-run"
    recipe = ROOT / "recipes" / "shapes-tiny-smoke.yaml"
    trained = run_module("-m", "omniphi.cli", "train", str(recipe), "--output_dir", str(out),
                         "--data.train.0.path", str(shapes / "train.json"), "--data.eval.0.path", str(shapes / "val.json"),
                         "--max_steps", "2", "--save_steps", "1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trained 2 steps" in trained.stdout
    assert "samples/s" in trained.stderr and "loss=" in trained.stderr  # the progress bar
    assert (out / "plots" / "loss.png").is_file()
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()

    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    asked = run_module("-m", "omniphi.cli", "ask", "--model", str(out), "--image", str(image),
                       "--audio", str(FIXTURES / "speech" / "capital.wav"), "--max-new-tokens", "4", "--stats",
                       "What colour is the circle?")
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert asked.stdout.strip()
    assert "answer tokens" in asked.stderr


def test_output_whose_base_leads_back_to_itself(qlora_run, tmp_path):
    import shutil

    out, _ = qlora_run
    loop = tmp_path / "loop"
    shutil.copytree(out, loop, ignore=shutil.ignore_patterns("checkpoint-*"))
    meta = json.loads((loop / "omniphi_trained.json").read_text())
    meta.update(base=str(loop), base_relative=".")
    (loop / "omniphi_trained.json").write_text(json.dumps(meta))
    with pytest.raises(TrainedOutputError, match="leads back to itself"):
        runtime.load(str(loop))


def test_flatten_rebases_a_chain_of_stages_onto_the_preset(tmp_path, shapes):
    """align (projectors + vision tower) → instruct (LoRA + projectors), flattened: one output on
    "tiny" that gives the chain's logits, whose weights are the last values of every trained module."""
    from omniphi.runtime.trained import flatten_trained, read_meta

    align, instruct, flat = tmp_path / "align", tmp_path / "instruct", tmp_path / "flat"
    train(make_recipe("align", align, [{"format": "llava_plain", "path": str(shapes / "captions.json")}],
                      train_modules=["multi_modal_projector", "vision_tower"], training={"max_steps": 2}))
    train(make_recipe("instruct", instruct, [{"format": "llava", "path": str(shapes / "train.json")}],
                      model={"base": str(align)}, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      training={"max_steps": 2, "learning_rate": 5e-3}))
    meta = flatten_trained(instruct, flat)

    assert meta["base"] == "tiny" and read_meta(flat)["base"] == "tiny"
    assert len(meta["stages"]) == 2
    assert any(n.startswith("vision_tower.") for n in meta["non_lora_trainables"])  # from the align stage
    assert any(n.startswith("audio_projector.") for n in meta["non_lora_trainables"])  # from instruct
    processor = runtime.load("tiny").processor
    chained = logits(runtime.load(str(instruct)).model, processor)
    flattened = logits(runtime.load(str(flat)).model, processor)
    torch.testing.assert_close(flattened, chained, atol=1e-5, rtol=1e-5)
    base = logits(runtime.load("tiny").model, processor)
    assert (base - flattened).abs().max() > 1e-3  # the flattened weights are not the base's


def test_flatten_refuses_two_adapters(tmp_path, shapes):
    from omniphi.runtime.trained import flatten_trained

    first, second = tmp_path / "first", tmp_path / "second"
    data = [{"format": "llava", "path": str(shapes / "train.json")}]
    train(make_recipe("instruct", first, data, lora={"r": 4, "alpha": 8}, training={"max_steps": 1}))
    train(make_recipe("instruct", second, data, model={"base": str(first)}, lora={"r": 4, "alpha": 8},
                      training={"max_steps": 1}))
    with pytest.raises(TrainedOutputError, match="each have a LoRA adapter"):
        flatten_trained(second, tmp_path / "flat")


def test_generation_defaults_and_card_travel_through_flatten_and_merge(tmp_path, shapes):
    """A training output's generation_config.json and model_card.json are what loading it, its
    flattened copy and its merged model directory answer with (not the base's greedy defaults)."""
    from transformers import GenerationConfig

    from omniphi.runtime.assistant import Assistant
    from omniphi.train.merge import merge_output
    from omniphi.runtime.trained import flatten_trained

    run = tmp_path / "run"
    train(make_recipe("align", run, [{"format": "llava_plain", "path": str(shapes / "captions.json")}],
                      train_modules=["multi_modal_projector"], training={"max_steps": 1}))
    assert Assistant.load(str(run)).generation_defaults.temperature == 0.0  # the tiny base says nothing: greedy
    GenerationConfig(do_sample=True, temperature=0.3, max_new_tokens=21).save_pretrained(run)
    (run / "pic.png").write_bytes((shapes / "images" / "000000.png").read_bytes())
    (run / "model_card.json").write_text(json.dumps({"name": "n", "summary": "s", "suggestions": [
        {"title": "t", "prompt": "What colour?", "image": "pic.png"}]}))

    flat, merged = tmp_path / "flat", tmp_path / "merged"
    flatten_trained(run, flat)
    merge_output(run, merged)
    for directory in (run, flat, merged):
        assistant = Assistant.load(str(directory))
        defaults = assistant.generation_defaults
        assert (defaults.temperature, defaults.max_new_tokens) == (0.3, 21), directory
        assert assistant.card.suggestions[0].media["image"].read_bytes() == (run / "pic.png").read_bytes()


def test_media_placement_travels_through_flatten_and_merge(tmp_path, shapes):
    """A packaged model that is served media first (the starter) stays so as its flattened copy and its
    merged model directory: the prompt of a question sent before its picture is the picture-first one."""
    from PIL import Image

    from omniphi.runtime.trained import flatten_trained
    from omniphi.train.merge import merge_output

    run = tmp_path / "run"
    train(make_recipe("align", run, [{"format": "llava_plain", "path": str(shapes / "captions.json")}],
                      train_modules=["multi_modal_projector"], training={"max_steps": 1}))
    flat, merged = tmp_path / "flat", tmp_path / "merged"
    flatten_trained(run, flat, media_placement="images_first")
    merge_output(flat, merged)
    picture = {"type": "image", "image": Image.new("RGB", (8, 8), (255, 0, 0))}
    question = {"type": "text", "text": "What colour?"}
    for directory, placement in ((run, "as_given"), (flat, "images_first"), (merged, "images_first")):
        processor = runtime.load(str(directory)).processor
        assert processor.config.media_placement == placement, directory
        text_first = processor.render([{"role": "user", "content": [question, picture]}], True).text
        picture_first = processor.render([{"role": "user", "content": [picture, question]}], True).text
        assert (text_first == picture_first) == (placement == "images_first"), directory
