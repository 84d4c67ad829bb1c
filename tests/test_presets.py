"""Presets: where parts come from, and other towers than CLIP."""

import pytest
import torch
from PIL import Image
from transformers import SiglipVisionConfig, SiglipVisionModel

from omniphi import presets, runtime


def test_phi2_offline_without_weights_names_every_missing_part(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.setenv("OMNIPHI_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(presets.MissingWeightsError) as caught:
        runtime.load("phi2")
    message = str(caught.value)
    for repo in ("microsoft/phi-2", "openai/clip-vit-large-patch14-336", "openai/whisper-tiny"):
        assert repo in message
    assert "OMNIPHI_WEIGHTS_DIR" in message and "\n" not in message


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        runtime.load("no-such-preset")
    with pytest.raises(ValueError, match="not an omniphi model directory"):
        runtime.load(str(tmp_path))


def test_siglip_tower_keeps_all_patches():
    language_model, tokenizer, _, whisper = presets.tiny_parts()
    siglip = SiglipVisionModel(SiglipVisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=2))
    model, processor = presets.assemble(language_model, tokenizer, vision_tower=siglip, whisper=whisper,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert model.config.vision_feature_select_strategy == "full"  # SigLIP has no CLS token to drop
    assert model.config.image_seq_length == 4
    batch = processor([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (30, 20))},
                                                    {"type": "text", "text": "hi"}]}],
                      add_generation_prompt=True, with_labels=False)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
