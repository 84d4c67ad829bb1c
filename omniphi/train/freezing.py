"""What trains in each stage, and which optimizer group (learning rate) each trainable belongs to.

Stage defaults (a recipe's `train_modules` replaces them; LoRA adapters are added by omniphi.train.lora):

    text      LoRA/QLoRA on the LLM, or the whole LLM without LoRA; towers and projectors frozen
    align     the projectors only (a recipe may add a tower, e.g. the starter's self-trained vision tower)
    instruct  the projectors + LoRA/QLoRA on the LLM (the whole LLM without LoRA); towers frozen

Modules are named by the model's attributes, never matched by substrings of parameter names.
"""

from __future__ import annotations

import torch
from torch import nn

from omniphi.train.recipe import RecipeError, name_list

MODULES = ("language_model", "vision_tower", "multi_modal_projector", "audio_tower", "audio_projector")
PROJECTORS = ("multi_modal_projector", "audio_projector")
TOWERS = ("vision_tower", "audio_tower")

# Optimizer groups: each has its own learning rate (recipe: learning_rate, projector_lr, tower_lr).
GROUP_OF_MODULE = {
    "language_model": "llm",
    "multi_modal_projector": "projector",
    "audio_projector": "projector",
    "vision_tower": "tower",
    "audio_tower": "tower",
}


def default_train_modules(stage: str, lora: bool) -> list[str]:
    if stage == "text":
        return [] if lora else ["language_model"]
    if stage == "align":
        return list(PROJECTORS)
    if stage == "instruct":
        return list(PROJECTORS) + ([] if lora else ["language_model"])
    raise RecipeError(f"unknown stage {stage!r}")


def resolve_train_modules(stage: str, spec: str | list[str], lora: bool, model: nn.Module) -> list[str]:
    """The fully trained modules of this run. Defaults skip modules the model lacks (a text-only
    model has no projectors); an explicitly named module that is missing is an error."""
    explicit = not (isinstance(spec, str) and spec == "auto")
    names = name_list(spec) if explicit else default_train_modules(stage, lora)
    for name in names:
        if name not in MODULES:
            raise RecipeError(f"train_modules: unknown module {name!r} (known: {', '.join(MODULES)})")
        if explicit and getattr(model, name, None) is None:
            raise RecipeError(f"train_modules: this model has no {name}")
    if lora and "language_model" in names:
        raise RecipeError("train_modules: with LoRA the LLM trains through its adapters; remove language_model")
    if stage == "align" and "language_model" in names:
        raise RecipeError("the align stage keeps the LLM frozen; train it in the text or instruct stage")
    return [n for n in dict.fromkeys(names) if getattr(model, n, None) is not None]


def apply_freezing(model: nn.Module, train_modules: list[str]) -> None:
    """Freeze everything, then unfreeze the named modules (call before LoRA is added)."""
    model.requires_grad_(False)
    for name in train_modules:
        getattr(model, name).requires_grad_(True)


def upcast_trainables(model: nn.Module) -> None:
    """Trainable weights in float32: the optimizer's updates (lr × grad ≈ 1e-7 relative) vanish in
    bf16, whatever dtype the frozen base runs in. Autocast does the bf16 compute."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


# Name parts that DDP / FSDP / torch.compile / checkpoint wrappers insert into parameter names.
_WRAPPER_PARTS = {"module", "_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module"}


def group_of(parameter_name: str) -> str:
    """"multi_modal_projector.linear_1.weight" → "projector"; LoRA weights live under language_model."""
    parts = [p for p in parameter_name.split(".") if p not in _WRAPPER_PARTS]
    return GROUP_OF_MODULE.get(parts[0] if parts else "", "llm")


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count per top-level module (LoRA counted under language_model)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            top = name.split(".", 1)[0]
            counts[top] = counts.get(top, 0) + param.numel()
    return counts
