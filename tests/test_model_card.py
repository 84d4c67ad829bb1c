"""A model directory's own generation defaults and card (omniphi/model_card.py), and the
starter's committed ones."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from transformers import GenerationConfig

from omniphi.chat import GenerationSettings
from omniphi.model_card import (
    ModelCardError,
    copy_model_files,
    generation_defaults,
    read_model_card,
    read_transcription_prompt,
    write_transcription_prompt,
)
from omniphi.presets import STARTER_WEIGHTS_DIR


def test_a_model_that_says_nothing_is_greedy():
    assert generation_defaults(GenerationConfig()).temperature == 0.0
    # a temperature without do_sample is not sampling (transformers ignores it too)
    assert generation_defaults(GenerationConfig(temperature=0.7)).temperature == 0.0


def test_sampling_defaults_come_from_the_generation_config():
    settings = generation_defaults(GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=40))
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.6, 0.9, 40)


def test_cli_flags_override_only_what_they_set():
    from omniphi.cli import _settings

    model = GenerationSettings(temperature=0.6, top_p=0.9, max_new_tokens=40)
    unset = Namespace(max_new_tokens=None, temperature=None, top_p=None, stop=None, seed=None)
    assert (_settings(unset, model).temperature, _settings(unset, model).max_new_tokens) == (0.6, 40)
    chosen = _settings(Namespace(**{**vars(unset), "temperature": 0.0, "stop": ["x"]}), model)
    assert (chosen.temperature, chosen.top_p, chosen.stop) == (0.0, 0.9, ["x"])


def write_card(directory, suggestion) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model_card.json").write_text(json.dumps({"name": "m", "summary": "s", "suggestions": [suggestion]}))


@pytest.mark.parametrize("suggestion, problem", [
    ({"title": "t", "prompt": "p", "image": "../outside.png"}, "not a file inside"),
    ({"title": "t", "prompt": "p", "image": "missing.png"}, "not a file inside"),
    ({"title": "t"}, "needs a prompt"),
    ({"prompt": "p"}, "'title' must be a non-empty string"),
])
def test_a_wrong_card_is_refused_with_what_is_wrong(tmp_path, suggestion, problem):
    (tmp_path / "outside.png").write_bytes(b"x")
    write_card(tmp_path / "model", suggestion)
    with pytest.raises(ModelCardError, match=problem):
        read_model_card(tmp_path / "model")


def test_copy_model_files_carries_the_card_and_its_media(tmp_path):
    source = tmp_path / "source"
    write_card(source, {"title": "t", "prompt": "p", "audio": "samples/q.wav"})
    (source / "samples").mkdir()
    (source / "samples" / "q.wav").write_bytes(b"RIFF")
    GenerationConfig(do_sample=True, temperature=0.3).save_pretrained(source)
    write_transcription_prompt(source, "Words: hexagon.")
    copy_model_files(source, tmp_path / "out")
    card = read_model_card(tmp_path / "out")
    assert card.suggestions[0].media["audio"].read_bytes() == b"RIFF"
    assert generation_defaults(GenerationConfig.from_pretrained(tmp_path / "out")).temperature == 0.3
    assert read_transcription_prompt(tmp_path / "out") == "Words: hexagon."


@pytest.mark.parametrize("text", ['{"prompt": ["a"]}', '["a"]', "{not json"])
def test_a_wrong_transcription_config_is_refused_naming_the_file(tmp_path, text):
    assert read_transcription_prompt(tmp_path) is None  # no file: no prompt
    (tmp_path / "transcription_config.json").write_text(text)
    with pytest.raises(ValueError, match="transcription_config.json"):
        read_transcription_prompt(tmp_path)


def test_the_starter_is_greedy_and_its_card_offers_only_what_it_was_trained_for():
    assert generation_defaults(GenerationConfig.from_pretrained(STARTER_WEIGHTS_DIR)).temperature == 0.0
    card = read_model_card(STARTER_WEIGHTS_DIR)
    assert "coloured shapes" in card.limits
    kinds = [set(s.media) for s in card.suggestions]
    assert {"image"} in kinds and {"image", "audio"} in kinds  # a picture to try, a spoken question
    assert all("describe" not in (s.prompt + s.detail).lower() for s in card.suggestions)
