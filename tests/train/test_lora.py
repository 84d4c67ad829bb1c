import bitsandbytes as bnb
import bitsandbytes.functional as F
import pytest
import torch
from torch import nn

from omniphi import runtime
from omniphi.train import freezing
from omniphi.train.lora import (
    apply_lora, lora_target_modules, nf4_round_trip_, quantize_nf4,
)
from omniphi.train.recipe import LoraSection, RecipeError


def test_targets_come_from_the_architecture_registry(tiny, tiny_chatml):
    assert lora_target_modules(tiny.model.language_model) == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    assert "gate_proj" in lora_target_modules(tiny_chatml.model.language_model)  # llama-type LLM
    assert lora_target_modules(tiny.model.language_model, "q_proj,v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(RecipeError, match="not Linear layers"):
        lora_target_modules(tiny.model.language_model, ["c_attn"])


def test_unregistered_architecture_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setattr(tiny.model.language_model.config, "model_type", "brand_new_llm")
    with pytest.raises(RecipeError, match="no LoRA targets registered for LLM type 'brand_new_llm'"):
        lora_target_modules(tiny.model.language_model)


def test_qlora_quantises_only_the_llm_linears_and_lora_wraps_only_the_llm():
    model = runtime.load("tiny").model
    head = model.language_model.get_output_embeddings()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("language_model.")}
    count = quantize_nf4(model.language_model, "cpu", torch.float32)
    assert count == 2 * 6  # 2 layers × (q, k, v, dense, fc1, fc2)
    # the head keeps its precision: a plain Linear (fast_ops' FewRowLinear after load), not a 4-bit one
    assert model.language_model.get_output_embeddings() is head and isinstance(head, nn.Linear)
    assert not isinstance(head, bnb.nn.Linear4bit)
    for name in ("vision_tower", "multi_modal_projector", "audio_tower", "audio_projector"):
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in getattr(model, name).modules()), name
    layer = model.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == "nf4" and layer.weight.compress_statistics  # double quantisation
    assert layer.weight.dtype == torch.uint8  # really packed, on the CPU

    freezing.apply_freezing(model, ["multi_modal_projector"])
    apply_lora(model, LoraSection(r=4, alpha=8))
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    assert isinstance(model.language_model.base_model.model.model.layers[0].self_attn.q_proj, LoraLinear4bit)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"language_model", "multi_modal_projector"}
    assert all("lora_" in n for n, p in model.language_model.named_parameters() if p.requires_grad)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items())  # towers/projectors untouched

    # The outer forward still works (media scattering + 4-bit LLM) and gradients reach LoRA and the projector.
    from PIL import Image

    batch = runtime.load("tiny").processor([[
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (30, 30))}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Black."}]])
    model(**batch).loss.backward()
    assert after["multi_modal_projector.linear_1.weight"].grad is not None
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)


def test_nf4_round_trip_reproduces_the_4bit_layer():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    quantized = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
    quantized.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, compress_statistics=True,
                                         quant_type="nf4")
    quantized.bias = nn.Parameter(linear.bias.data.clone())
    quantized = quantized.to("cpu")
    x = torch.randn(3, 128)

    class Holder(nn.Module):  # the round trip walks an LLM; give it a minimal one
        def __init__(self):
            super().__init__()
            self.proj = linear
            self.head = nn.Linear(64, 10)

        def get_output_embeddings(self):
            return self.head

    holder = Holder()
    head_before = holder.head.weight.detach().clone()
    assert not torch.allclose(quantized(x), linear(x), atol=1e-3)  # NF4 really changes the weights
    assert nf4_round_trip_(holder, torch.float32) == 1
    torch.testing.assert_close(linear(x), quantized(x), atol=1e-6, rtol=0)
    assert torch.equal(holder.head.weight, head_before)  # the head is never quantised
    expected = F.dequantize_4bit(quantized.weight.data, quantized.weight.quant_state)
    assert torch.equal(linear.weight.data, expected)


@pytest.mark.parametrize("stage,lora,expected", [
    ("text", True, []),
    ("text", False, ["language_model"]),
    ("align", False, ["multi_modal_projector", "audio_projector"]),
    ("instruct", True, ["multi_modal_projector", "audio_projector"]),
    ("instruct", False, ["multi_modal_projector", "audio_projector", "language_model"]),
])
def test_stage_defaults(tiny, stage, lora, expected):
    assert freezing.resolve_train_modules(stage, "auto", lora, tiny.model) == expected


def test_explicit_train_modules_are_checked(tiny):
    assert freezing.resolve_train_modules("align", ["multi_modal_projector", "vision_tower"], False, tiny.model) == [
        "multi_modal_projector", "vision_tower"]
    with pytest.raises(RecipeError, match="unknown module"):
        freezing.resolve_train_modules("align", ["projector"], False, tiny.model)
    with pytest.raises(RecipeError, match="LLM frozen"):
        freezing.resolve_train_modules("align", ["language_model"], False, tiny.model)
    with pytest.raises(RecipeError, match="through its adapters"):
        freezing.resolve_train_modules("instruct", ["language_model"], True, tiny.model)


def test_groups_and_upcast():
    model = runtime.load("tiny", dtype=torch.bfloat16).model
    freezing.apply_freezing(model, ["multi_modal_projector", "vision_tower"])
    freezing.upcast_trainables(model)
    dtypes = {n.split(".")[0]: p.dtype for n, p in model.named_parameters()}
    assert dtypes["multi_modal_projector"] == torch.float32 and dtypes["vision_tower"] == torch.float32
    assert dtypes["language_model"] == torch.bfloat16  # the frozen base stays small
    assert freezing.group_of("multi_modal_projector.linear_1.weight") == "projector"
    assert freezing.group_of("audio_tower.layers.0.fc1.weight") == "tower"
    assert freezing.group_of("_fsdp_wrapped_module.multi_modal_projector.linear_1.weight") == "projector"
    assert freezing.group_of("language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == "llm"
