"""The training-output format, read side: what `omniphi train` writes (each checkpoint-N too) and how
it is applied to its base when loaded. `omniphi.train.outputs` writes it.

    omniphi_trained.json               base model spec (+ fingerprint), stage, LoRA / quantisation, step;
                                       optionally "media_placement" (how the model is served prompts,
                                       omniphi.templates), which overrides its base's
    adapter/                           PEFT LoRA adapter of the LLM (standard adapter_config.json +
                                       adapter_model.safetensors), when the run used LoRA
    non_lora_trainables.safetensors    everything else that trained (projectors, an unfrozen tower, or a
                                       whole LLM), named as in OmniForConditionalGeneration
    recipe.yaml, log.jsonl, plots/     (final output only)

Small on purpose (a Phi-2 QLoRA adapter is ~0.4 GB, not 5.4 GB), so checkpoints are cheap and each one
is itself a model `omniphi ask --model DIR` loads: its chain of bases (a later stage trains on an
earlier stage's output) is walked down to a preset or a plain model directory, that is loaded, and
each stage is applied on top in order; for a QLoRA stage the LLM's Linear weights first go through
the same NF4 quantisation the run trained against, then the adapter is merged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniphi import presets
from omniphi.errors import UserError
from omniphi.model_card import copy_model_files
from omniphi.templates import check_media_placement

MARKER = "omniphi_trained.json"
ADAPTER_DIR = "adapter"
TRAINABLES_FILE = "non_lora_trainables.safetensors"
FORMAT_VERSION = 1
NF4_BLOCKSIZE = 64  # bitsandbytes' default for Params4bit; training and the round trip must use the same


class TrainedOutputError(UserError, ValueError):
    """A training output cannot be loaded (missing files, base model changed, wrong weights)."""


def is_training_output(directory: str | Path) -> bool:
    return (Path(directory) / MARKER).is_file()


# -- identity of the base ----------------------------------------------------------------------------
def base_fingerprint(model: nn.Module) -> str:
    """A hash of the first values of every weight (as bf16, so loading the base in another dtype
    gives the same hash). Catches an adapter being applied to a different base — e.g. "starter"
    after its weights changed — which would otherwise load fine and answer nonsense."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        head = tensor.detach().reshape(-1)[:32].to("cpu", torch.bfloat16).float()
        digest.update(name.encode())
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def resolve_base(meta: dict, directory: Path) -> str:
    """The spec of the model a training output was trained on (a preset name or a directory)."""
    base = meta["base"]
    if base in presets.PRESETS or Path(base).is_dir():
        return base
    relative = meta.get("base_relative")
    if relative and (directory / relative).is_dir():
        return str((directory / relative).resolve())
    raise TrainedOutputError(f"{directory}: its base model {base} is gone (moved?); put it back or retrain")


# -- reading -----------------------------------------------------------------------------------------------
def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TrainedOutputError(f"cannot read {path}: {error}") from None


def load_non_lora(model: nn.Module, directory: Path, meta: dict) -> None:
    """Copy the saved non-LoRA trainables into `model`; every saved name must land on a parameter."""
    path = directory / TRAINABLES_FILE
    if not path.is_file():
        raise TrainedOutputError(f"{path} is missing")
    weights = load_file(str(path))
    own = dict(model.named_parameters())
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise TrainedOutputError(f"{path}: weights {unknown[:3]} do not exist in the model")
    with torch.no_grad():
        for name, value in weights.items():
            if own[name].shape != value.shape:
                raise TrainedOutputError(f"{path}: {name} has shape {tuple(value.shape)}, the model {tuple(own[name].shape)}")
            own[name].copy_(value)


# -- a chain of stages -----------------------------------------------------------------------------------
def training_chain(directory: str | Path) -> tuple[list[tuple[Path, dict]], str]:
    """The stages down to the first base that is not a training output: ([(directory, meta)], last
    stage first; root spec: a preset that is built from parts, or a plain model directory). A
    preset that is itself a training output (e.g. "starter") is followed into its directory."""
    chain: list[tuple[Path, dict]] = []
    seen: set[Path] = set()
    current = Path(directory)
    while True:
        if current.resolve() in seen:
            raise TrainedOutputError(f"{directory}: its base model leads back to itself ({current})")
        seen.add(current.resolve())
        meta = read_meta(current)
        if meta.get("format_version") != FORMAT_VERSION:
            raise TrainedOutputError(f"{current}: unknown training output format {meta.get('format_version')!r}")
        chain.append((current, meta))
        base = resolve_base(meta, current)
        packaged = presets.packaged_directory(base)
        if packaged is not None:
            base = str(packaged[0]) if is_training_output(packaged[0]) else packaged[1]
        if base in presets.PRESETS or not is_training_output(base):
            return chain, base
        current = Path(base)


def apply_stage(model: nn.Module, directory: Path, meta: dict, *, dtype: torch.dtype, merge: bool = True) -> None:
    """Turn `model` (this stage's base, as loaded) into what the stage trained, in place."""
    expected = meta.get("base_fingerprint")
    if expected and os.environ.get("OMNIPHI_SKIP_BASE_CHECK") != "1":
        actual = base_fingerprint(model)
        if actual != expected:
            raise TrainedOutputError(
                f"{directory} was trained on a different {meta['base']!r} (fingerprint {expected}, now {actual}): "
                f"its weights would not fit. Retrain, or set OMNIPHI_SKIP_BASE_CHECK=1 to load anyway."
            )
    if meta.get("init") == "scratch":
        from transformers import AutoConfig, AutoModelForCausalLM

        text_config = dict(meta["text_config"])
        config = AutoConfig.for_model(text_config.pop("model_type"), **text_config)
        model.language_model = AutoModelForCausalLM.from_config(config).to(dtype)
        model.config.text_config = config
    if meta.get("quantization") == "nf4":
        nf4_round_trip_(model.language_model, getattr(torch, meta.get("quantized_dtype", "float32")))
    if meta.get("non_lora_trainables"):
        load_non_lora(model, directory, meta)
    if meta.get("media_placement"):
        model.config.media_placement = check_media_placement(meta["media_placement"])
    if meta.get("has_adapter"):
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model.language_model, directory / ADAPTER_DIR, is_trainable=False)
        model.language_model = peft_model.merge_and_unload() if merge else peft_model
    model.eval()


def nf4_round_trip_(language_model: nn.Module, quantized_dtype: torch.dtype) -> int:
    """Overwrite each Linear weight (head excluded) with dequantise(quantise_nf4(weight)), the
    values a QLoRA run's `Linear4bit` layers computed with. Runs on CPU; returns the layer count."""
    import bitsandbytes.functional as F

    from omniphi.runtime.quantize import decoder_linears

    count = 0
    with torch.no_grad():
        for _, module in decoder_linears(language_model):
            weight = module.weight.data
            packed, state = F.quantize_4bit(
                weight.to("cpu", quantized_dtype).contiguous(), blocksize=NF4_BLOCKSIZE, compress_statistics=True,
                quant_type="nf4",
            )
            weight.copy_(F.dequantize_4bit(packed, state).to(weight.dtype))
            count += 1
    return count


# -- re-basing a chain of stages --------------------------------------------------------------------------
def flatten_trained(directory: str | Path, out: str | Path, *, media_placement: str | None = None) -> dict:
    """Write the training output `directory` again as one output on the preset at the root of its
    chain of stages (stage 3 on stage 2's output on stage 1's on a preset): the adapter, and every
    non-LoRA weight any stage trained, with their final values. Shipping a model then needs no
    intermediate run directories (the committed starter weights are made this way).

    Only one stage of the chain may carry a LoRA adapter (adapters of two stages would have to be
    merged into the LLM first, and the result would no longer be small). `media_placement` records how
    the flattened model is served prompts; otherwise the newest stage's record, if any, is kept."""
    import shutil

    directory, out = Path(directory), Path(out)
    chain, base = training_chain(directory)
    if base not in presets.PRESETS:
        raise TrainedOutputError(f"{chain[-1][0]}: its base {base} is a model directory, not a preset or a training output")
    if any(m.get("quantization") for _, m in chain) or any(m.get("init") == "scratch" for _, m in chain):
        raise TrainedOutputError(f"{directory}: QLoRA or scratch-LLM stages cannot be flattened onto the preset")
    adapters = [d for d, m in chain if m.get("has_adapter")]
    if len(adapters) > 1:
        raise TrainedOutputError(f"{directory}: stages {', '.join(map(str, adapters))} each have a LoRA adapter")
    root_meta = chain[-1][1]
    # Each stage's file holds what that stage trained; a later stage's value of a weight wins.
    weights: dict[str, torch.Tensor] = {}
    for stage_dir, meta in reversed(chain):
        if meta.get("non_lora_trainables"):
            weights.update(load_file(str(stage_dir / TRAINABLES_FILE)))
    names = sorted(weights)

    out.mkdir(parents=True, exist_ok=True)
    if adapters:
        shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
        shutil.copytree(adapters[0] / ADAPTER_DIR, out / ADAPTER_DIR)
    if weights:
        save_file(weights, str(out / TRAINABLES_FILE), metadata={"format": "pt"})
    last = chain[0][1]
    meta = {
        "base": root_meta["base"],
        "base_fingerprint": root_meta.get("base_fingerprint"),
        "stage": last.get("stage"),
        "stages": [m.get("recipe_name") or m.get("stage") for _, m in reversed(chain)],
        "init": "pretrained",
        "quantization": None,
        "lora": next((m["lora"] for _, m in chain if m.get("has_adapter")), None),
        "train_modules": sorted({t for _, m in chain for t in m.get("train_modules", [])}),
        "recipe_name": last.get("recipe_name"),
        "eval": last.get("eval", {}),
        "format_version": FORMAT_VERSION,
        "has_adapter": bool(adapters),
        "non_lora_trainables": names,
    }
    media_placement = media_placement or next((m["media_placement"] for _, m in chain if m.get("media_placement")), None)
    if media_placement:
        meta["media_placement"] = check_media_placement(media_placement)
    (out / MARKER).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    copy_model_files(directory, out)  # the last stage's generation defaults and model card
    return meta
