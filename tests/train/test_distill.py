"""Replay by distillation (omniphi/train/distill.py): the KL to the base LLM on samples of `distill` sources."""

import json

import pytest
import torch

from omniphi import runtime
from omniphi.train.recipe import RecipeError, load_recipe
from tests.train.conftest import make_recipe, read_log, train

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def write_texts(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def corpora(tmp_path):
    """A task corpus the LoRA learns, and general text the base wrote (here: any other text) to keep."""
    task = write_texts(tmp_path / "task.jsonl", ["red circle top left. blue square bottom right."] * 8)
    keep = write_texts(tmp_path / "keep.jsonl", [
        "The river runs through the valley and the town was built on its banks long ago.",
        "Bakers mix flour, water and yeast, and wait for the dough to rise before they shape it.",
        "In the morning the market fills with people buying bread, fruit and fresh fish.",
        "Children often learn to read by listening to stories before they can follow the words.",
    ])
    return task, keep


def kl_to_base(output_dir, texts) -> float:
    """Mean KL(base ‖ trained) per next-token position of `texts` (the trained output loaded, merged)."""
    base, trained = runtime.load("tiny"), runtime.load(str(output_dir))
    total, positions = 0.0, 0
    for text in texts:
        ids = base.processor.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            p = torch.log_softmax(base.model.language_model(input_ids=ids).logits[0, :-1].float(), -1)
            q = torch.log_softmax(trained.model.language_model(input_ids=ids).logits[0, :-1].float(), -1)
        total += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
        positions += ids.shape[1] - 1
    return total / positions


def test_distillation_keeps_the_trained_llm_closer_to_the_base_on_the_distilled_text(tmp_path, corpora):
    task, keep = corpora
    texts = [json.loads(line)["text"] for line in keep.read_text().splitlines()]
    # a strong weight, so that 40 steps of a tiny LoRA show the pull (0.13 of the plain run's KL when written)
    training = {"max_steps": 40, "learning_rate": 1e-2}

    def run(name, distill):
        out = tmp_path / name
        sources = [{"format": "text", "path": str(task)}, {"format": "text", "path": str(keep), "distill": distill}]
        train(make_recipe("text", out, sources, lora=LORA,
                          training={**training, "distill_weight": 100.0, "output_dir": str(out)}))
        return out

    plain, distilled = run("plain", False), run("distilled", True)
    assert all("distill_kl" not in r for r in read_log(plain))
    logged = [r["distill_kl"] for r in read_log(distilled) if "distill_kl" in r]
    assert logged and all(kl >= 0 for kl in logged)
    assert kl_to_base(distilled, texts) < 0.5 * kl_to_base(plain, texts)


def test_the_kl_is_zero_before_the_lora_moves_and_matches_two_separate_models_after(tmp_path, corpora):
    from omniphi.train.collator import training_pipeline
    from omniphi.train.data import open_source
    from omniphi.train.distill import distillation_kl
    from omniphi.train.lora import apply_lora
    from omniphi.train.recipe import DataSource, LoraSection

    _, keep = corpora
    loaded = runtime.load("tiny")
    model = loaded.model
    apply_lora(model, LoraSection(**LORA))
    dataset, collate = training_pipeline(open_source(DataSource(format="text", path=str(keep), distill=True)),
                                         loaded.processor, max_length=64)
    batch = collate([dataset[0], dataset[1]])
    rows = batch.pop("distill")
    assert rows.tolist() == [True, True]
    batch.pop("skipped", None)

    def kl():
        with torch.no_grad():
            logits = model(**batch).logits
            return distillation_kl(model, batch, rows, logits)

    fresh, positions = kl()
    assert float(fresh) == pytest.approx(0.0, abs=1e-6)  # LoRA's B starts at zero: the same model
    assert positions == int((batch["labels"][:, 1:] != -100).sum())

    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    moved, _ = kl()
    # the same quantity from the base model and the trained one run separately
    base = runtime.load("tiny").model
    with torch.no_grad():
        labels = batch["labels"]
        p = torch.log_softmax(base.language_model(input_ids=batch["input_ids"],
                                                  attention_mask=batch["attention_mask"]).logits[:, :-1].float(), -1)
        q = torch.log_softmax(model.language_model(input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"]).logits[:, :-1].float(), -1)
    trained = labels[:, 1:] != -100
    expected = torch.nn.functional.kl_div(q[trained], p[trained], log_target=True, reduction="sum")
    assert float(moved) > 1e-3
    assert float(moved) == pytest.approx(float(expected), rel=1e-4)


def test_a_batch_without_distilled_samples_carries_no_flags(tmp_path, corpora):
    from omniphi.train.collator import training_pipeline
    from omniphi.train.data import open_source
    from omniphi.train.recipe import DataSource

    task, _ = corpora
    processor = runtime.load("tiny").processor
    dataset, collate = training_pipeline(open_source(DataSource(format="text", path=str(task))), processor, 64)
    assert "distill" not in collate([dataset[0], dataset[1]])


def test_a_distill_source_with_pictures_stops_the_run(tmp_path, shapes):
    from omniphi.train.distill import DistillMediaError

    out = tmp_path / "media"
    recipe = make_recipe("instruct", out, [{"format": "llava", "path": str(shapes / "train.json"), "distill": True}],
                         lora=LORA)
    with pytest.raises(DistillMediaError, match="text-only"):
        train(recipe)


@pytest.mark.parametrize("change, problem", [
    ({"lora": None}, "distill needs lora"),
    ({"data": {"train": [{"format": "asr_manifest", "path": "x.jsonl", "distill": True}]}}, "text-only"),
    ({"data": {"train": [{"format": "text", "path": "x.jsonl"}],
               "eval": [{"format": "text", "path": "x.jsonl", "distill": True}]}}, "training sources only"),
    ({"training": {"distill_weight": -1}}, "distill_weight"),
])
def test_recipes_refuse_distillation_they_cannot_do(tmp_path, change, problem):
    recipe = make_recipe("text", tmp_path / "out", [{"format": "text", "path": "x.jsonl", "distill": True}],
                         **{"lora": LORA, **change})
    with pytest.raises(RecipeError, match=problem):
        load_recipe(recipe)
