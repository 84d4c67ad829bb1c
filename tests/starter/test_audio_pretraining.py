"""Stage 2 of `make starter` (recipes/starter-audio.yaml, the audio_words stage): the audio
projector learns to spell spoken questions as word embeddings."""

import json
from pathlib import Path

import pytest
import torch

from omniphi.train.audio_words import greedy_decode
from omniphi.train.recipe import load_recipe
from omniphi.train.run import run_training

ROOT = Path(__file__).resolve().parents[2]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "starter-shapes"


def one_hot_cosines(path: list[int], vocabulary: int = 10) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(path), vocabulary).float()


def test_greedy_decode_merges_repeats_and_drops_blanks():
    blank = 0
    assert greedy_decode(one_hot_cosines([0, 3, 3, 0, 5, 5, 5, 0, 0, 3]), 10, blank) == [3, 5, 3]
    assert greedy_decode(one_hot_cosines([3, 0, 3]), 3, blank) == [3, 3]  # a blank separates a doubled word
    assert greedy_decode(one_hot_cosines([3, 4, 0, 0]), 2, blank) == [3, 4]  # padding past the length is ignored


@pytest.fixture(scope="module")
def spoken_questions(tmp_path_factory):
    """The committed held-out fixture's spoken questions as train and val ASR manifests."""
    questions = json.loads((FIXTURE / "questions.json").read_text())["questions"]
    root = tmp_path_factory.mktemp("spoken")
    lines = [json.dumps({"id": q["id"], "audio": str(FIXTURE / q["audio"]), "text": q["question"]}) for q in questions]
    (root / "train_asr.jsonl").write_text("\n".join(lines[:16]) + "\n")
    (root / "val_asr.jsonl").write_text("\n".join(lines[16:]) + "\n")
    return root


@pytest.mark.slow
def test_pretraining_teaches_the_projector_to_spell_the_questions(tmp_path, spoken_questions):
    from omniphi.runtime.loading import load_weights
    from omniphi.runtime.trained import read_meta

    out = tmp_path / "audio"
    # The starter build's own recipe, on 16 fixture clips instead of 2,048; its second source, the general
    # speech `make starter` writes (data/starter-replay/speech_asr.jsonl), is 4 of the same clips here
    recipe = load_recipe(ROOT / "recipes" / "starter-audio.yaml", [
        ("model.base", "starter-base"), ("output_dir", str(out)), ("epochs", "12"), ("batch_size", "8"),
        ("learning_rate", "5e-3"), ("negatives", "256"),
        ("data.train.0.path", str(spoken_questions / "train_asr.jsonl")), ("data.train.0.limit", "16"),
        ("data.train.1.path", str(spoken_questions / "train_asr.jsonl")), ("data.train.1.limit", "4"),
        ("data.eval.0.path", str(spoken_questions / "val_asr.jsonl")), ("data.eval.0.limit", "8")])
    result = run_training(recipe)
    accuracy = {k.removeprefix("val_spelling_"): v for k, v in result.metrics.items() if k.startswith("val_spelling_")}
    # 16 clips are enough to move the tokens onto their words (untrained: cosine ~0.05)
    assert accuracy["cosine"] > 0.5
    meta = read_meta(out)
    assert meta["base"] == "starter-base" and meta["stage"] == "audio_words"
    assert meta["non_lora_trainables"] and all(n.startswith("audio_projector.") for n in meta["non_lora_trainables"])
    assert meta["eval"]["val_spelling_cosine"] == accuracy["cosine"]
    trained = load_weights(str(out)).model
    base = load_weights("starter-base").model
    assert not torch.equal(trained.audio_projector.linear_1.weight, base.audio_projector.linear_1.weight)
    assert torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
