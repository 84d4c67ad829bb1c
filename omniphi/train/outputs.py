"""The training output directory (final output and every checkpoint-N inside it), write side.

The format and reading it (loading an output as a model, flattening a chain of stages) live in
`omniphi.runtime.trained`, below the training code, so inference never imports `train/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniphi.presets import PRESETS
from omniphi.runtime.trained import (
    ADAPTER_DIR,
    FORMAT_VERSION,
    MARKER,
    TRAINABLES_FILE,
    TrainedOutputError,
    base_fingerprint,
    load_non_lora,
    read_meta,
)

__all__ = ["base_fingerprint", "base_record", "load_trainables_into", "save_trained"]


def base_record(spec: str, directory: Path) -> dict[str, str]:
    """How to find the base again: a preset name, or a directory (absolute + relative to the output)."""
    if spec in PRESETS:
        return {"base": spec}
    path = Path(spec).resolve()
    return {"base": str(path), "base_relative": os.path.relpath(path, directory.resolve())}


# -- writing ------------------------------------------------------------------------------------------------
def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_trained(model: nn.Module, directory: str | Path, meta: dict[str, Any],
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter and the other trainables of `model` (an OmniForConditionalGeneration whose
    language_model may be a PeftModel). `state_dict` is the gathered state where DeepSpeed/FSDP
    shard the parameters; by default the model's own."""
    from omniphi.train.lora import has_lora

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    state = state_dict if state_dict else params
    lora = has_lora(model)
    if lora:
        peft_model = model.language_model
        # PEFT picks the adapter's weights out of the LLM's state (the gathered one under ZeRO-3/FSDP).
        lm_state = _strip_prefix(state_dict, "language_model.") if state_dict else None
        # save_embedding_layers=False: PEFT would otherwise add the whole embedding matrix and head
        # to every adapter of an LLM whose vocabulary was resized for <image>/<audio> (SmolLM2:
        # +113 MB each); they never train here and the base provides them on loading.
        peft_model.save_pretrained(directory / ADAPTER_DIR, state_dict=lm_state, safe_serialization=True,
                                   save_embedding_layers=False)
        if not (directory / ADAPTER_DIR / "adapter_model.safetensors").is_file():
            raise TrainedOutputError("PEFT wrote no adapter weights")
    others = [n for n in trainable if not (lora and n.startswith("language_model."))]
    missing = [n for n in others if n not in state]
    if missing:
        raise TrainedOutputError(f"trainable weights missing from the state dict: {missing[:3]}")
    if others:
        save_file({n: state[n].detach().to("cpu").contiguous() for n in others}, str(directory / TRAINABLES_FILE),
                  metadata={"format": "pt"})
    meta = {**meta, "format_version": FORMAT_VERSION, "has_adapter": lora, "non_lora_trainables": others}
    (directory / MARKER).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_trainables_into(model: nn.Module, directory: str | Path) -> None:
    """Load non_lora_trainables (and the LoRA adapter into an already LoRA-wrapped LLM) in place:
    what resuming needs. Every saved name must land on a parameter, and vice versa."""
    from omniphi.train.lora import has_lora

    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("non_lora_trainables"):
        load_non_lora(model, directory, meta)
    if meta.get("has_adapter"):
        if not has_lora(model):
            raise TrainedOutputError(f"{directory} holds a LoRA adapter but the model has no LoRA layers")
        from peft import set_peft_model_state_dict

        weights = load_file(str(directory / ADAPTER_DIR / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model.language_model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise TrainedOutputError(f"adapter weights do not fit this model: {unexpected[:3]}")
        lora_missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if lora_missing:
            raise TrainedOutputError(f"adapter weights missing for {lora_missing[:3]}")
