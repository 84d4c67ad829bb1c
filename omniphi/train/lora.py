"""LoRA and QLoRA for the LLM only.

* LoRA targets come from a registry keyed by the LLM's `model_type` (TinyLLaVA Factory's approach),
  not from substrings of model names: a new architecture is one `register_lora_targets` call.
* QLoRA: the LLM's `nn.Linear` layers (not its output head) become bitsandbytes `Linear4bit`
  NF4 with double quantisation; towers and projectors stay unquantised and outside LoRA. A layer is
  quantised when it is moved to its device, on CUDA or CPU alike (bitsandbytes ≥ 0.45 runs 4-bit on CPU).
* PEFT wraps `model.language_model` only, so the outer model's forward (media scattering) is untouched.
* `nf4_round_trip_` (omniphi.runtime.trained) reproduces, on plain Linear layers, exactly the weights a QLoRA run trained
  against; loading and merging a QLoRA output use it so the result computes what was trained.
"""

from __future__ import annotations

import torch
from torch import nn

# The round trip lives with the training-output format it reads (loading a QLoRA output uses it).
from omniphi.runtime.trained import NF4_BLOCKSIZE, nf4_round_trip_
from omniphi.train.recipe import LoraSection, RecipeError, name_list

__all__ = ["NF4_BLOCKSIZE", "apply_lora", "has_lora", "lora_target_modules", "nf4_round_trip_", "quantize_nf4"]

# model_type → the Linear layers LoRA adapts: all attention and MLP projections (QLoRA paper: adapting
# every linear layer matters more than the rank).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}


def register_lora_targets(model_type: str, modules: tuple[str, ...] | list[str]) -> None:
    LORA_TARGETS[model_type] = tuple(modules)


def lora_target_modules(language_model: nn.Module, spec: str | list[str] = "auto") -> list[str]:
    """The module names LoRA adapts in this LLM; every name must exist as a Linear layer."""
    if isinstance(spec, str) and spec == "auto":
        model_type = language_model.config.model_type
        if model_type not in LORA_TARGETS:
            raise RecipeError(
                f"no LoRA targets registered for LLM type {model_type!r}: set lora.target_modules in the recipe "
                f"(e.g. [q_proj, v_proj]) or add it to omniphi.train.lora.LORA_TARGETS"
            )
        targets = list(LORA_TARGETS[model_type])
    else:
        targets = name_list(spec)
    linear_names = {name.rsplit(".", 1)[-1] for name, module in _linear_layers(language_model)}
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise RecipeError(f"lora.target_modules {missing} are not Linear layers of this LLM (it has {sorted(linear_names)})")
    return targets


def _linear_layers(language_model: nn.Module):
    """(name, module) of the LLM's Linear layers (plain or 4-bit), the output head excluded: the
    head maps to the vocabulary and is kept in full precision, as bitsandbytes' integration does."""
    import bitsandbytes as bnb

    head = language_model.get_output_embeddings()
    for name, module in language_model.named_modules():
        if isinstance(module, (nn.Linear, bnb.nn.Linear4bit)) and module is not head and "lora_" not in name:
            yield name, module


# -- QLoRA -------------------------------------------------------------------------------------------------
def quantize_nf4(language_model: nn.Module, device: torch.device | str, compute_dtype: torch.dtype) -> int:
    """Replace the LLM's Linear layers by NF4 + double-quant `Linear4bit` on `device`; returns how many.

    Layer by layer, so a GPU never holds the full-precision LLM. Only the LLM: the towers and
    projectors are other submodules of the outer model and are never visited."""
    import bitsandbytes as bnb

    count = 0
    for name, module in list(_linear_layers(language_model)):
        if isinstance(module, bnb.nn.Linear4bit):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = language_model.get_submodule(parent_name) if parent_name else language_model
        q = bnb.nn.Linear4bit(
            module.in_features, module.out_features, bias=module.bias is not None,
            compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            module.weight.data.to("cpu"), requires_grad=False, compress_statistics=True, quant_type="nf4",
            blocksize=NF4_BLOCKSIZE,
        )
        if module.bias is not None:
            q.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        # On CPUs with AVX-512 bf16, bitsandbytes repacks the weight in place at the first eval-mode
        # forward; keep one format so evaluation between training steps leaves the layer as it was.
        q.support_avx512bf16_for_cpu = False
        setattr(parent, child, q.to(device))  # .to() quantises
        count += 1
    # PEFT picks its 4-bit-aware LoRA layer (dtype handling, merging) from this flag.
    language_model.is_loaded_in_4bit = True
    return count


# -- LoRA ----------------------------------------------------------------------------------------------------
def lora_config(language_model: nn.Module, section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=lora_target_modules(language_model, section.target_modules),
        bias=section.bias,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, section: LoraSection) -> None:
    """Wrap `model.language_model` in a PEFT LoRA model (adapters trainable, float32)."""
    from peft import get_peft_model

    model.language_model = get_peft_model(model.language_model, lora_config(model.language_model, section))


def has_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model.language_model, PeftModel)
