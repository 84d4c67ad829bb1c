"""The training output directory (final output and every checkpoint-N inside it), and loading it.

    omniphi_trained.json               base model spec (+ fingerprint), stage, LoRA / quantisation, step
    adapter/                           PEFT LoRA adapter of the LLM (standard adapter_config.json +
                                       adapter_model.safetensors), when the run used LoRA
    non_lora_trainables.safetensors    everything else that trained (projectors, an unfrozen tower, or a
                                       whole LLM), named as in OmniForConditionalGeneration
    recipe.yaml, log.jsonl, plots/     (final output only)

Small on purpose (a Phi-2 QLoRA adapter is ~0.4 GB, not 5.4 GB), so checkpoints are cheap and each one
is itself a model `omniphi ask --model DIR` loads: the base is rebuilt from its spec, the saved weights
are applied, and for a QLoRA run the LLM's Linear weights go through the same NF4 quantisation the
run trained against before the adapter is merged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniphi.model_card import GENERATION_CONFIG_FILE, copy_model_files, read_model_card

MARKER = "omniphi_trained.json"
ADAPTER_DIR = "adapter"
TRAINABLES_FILE = "non_lora_trainables.safetensors"
FORMAT_VERSION = 1


class TrainedOutputError(ValueError):
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


def base_record(spec: str, directory: Path) -> dict[str, str]:
    """How to find the base again: a preset name, or a directory (absolute + relative to the output)."""
    from omniphi.presets import PRESETS

    if spec in PRESETS:
        return {"base": spec}
    path = Path(spec).resolve()
    return {"base": str(path), "base_relative": os.path.relpath(path, directory.resolve())}


def resolve_base(meta: dict, directory: Path) -> str:
    from omniphi.presets import PRESETS

    base = meta["base"]
    if base in PRESETS or Path(base).is_dir():
        return base
    relative = meta.get("base_relative")
    if relative and (directory / relative).is_dir():
        return str((directory / relative).resolve())
    raise TrainedOutputError(f"{directory}: its base model {base} is gone (moved?); put it back or retrain")


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


# -- reading -----------------------------------------------------------------------------------------------
def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TrainedOutputError(f"cannot read {path}: {error}") from None


def load_trainables_into(model: nn.Module, directory: str | Path) -> None:
    """Load non_lora_trainables (and the LoRA adapter into an already LoRA-wrapped LLM) in place:
    what resuming needs. Every saved name must land on a parameter, and vice versa."""
    from omniphi.train.lora import has_lora

    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("non_lora_trainables"):
        _load_non_lora(model, directory, meta)
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


def _load_non_lora(model: nn.Module, directory: Path, meta: dict) -> None:
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


def load_trained(directory: str | Path, dtype: torch.dtype = torch.float32, name: str | None = None,
                 merge: bool = True):
    """A training output as a `LoadedModel` (what `presets.load(DIR)` returns for it).

    merge=True folds the LoRA adapter into the LLM's weights (plain inference speed);
    merge=False keeps the PEFT model (the adapter model, e.g. to compare with the merged one)."""
    directory = Path(directory)
    key = directory.resolve()
    if key in _LOADING:
        # e.g. starter weights trained with base "starter", when "starter" itself loads them
        raise TrainedOutputError(f"{directory}: its base model leads back to itself")
    _LOADING.add(key)
    try:
        return _load_trained(directory, dtype, name, merge)
    finally:
        _LOADING.discard(key)


_LOADING: set[Path] = set()


def _load_trained(directory: Path, dtype: torch.dtype, name: str | None, merge: bool):
    from omniphi import presets
    from omniphi.train.lora import nf4_round_trip_

    meta = read_meta(directory)
    if meta.get("format_version") != FORMAT_VERSION:
        raise TrainedOutputError(f"{directory}: unknown training output format {meta.get('format_version')!r}")
    base = resolve_base(meta, directory)
    loaded = presets.load(base, dtype=dtype)
    model = loaded.model
    expected = meta.get("base_fingerprint")
    if expected and os.environ.get("OMNIPHI_SKIP_BASE_CHECK") != "1":
        actual = base_fingerprint(model)
        if actual != expected:
            raise TrainedOutputError(
                f"{directory} was trained on a different {base!r} (fingerprint {expected}, now {actual}): "
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
        _load_non_lora(model, directory, meta)
    if meta.get("has_adapter"):
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model.language_model, directory / ADAPTER_DIR, is_trainable=False)
        model.language_model = peft_model.merge_and_unload() if merge else peft_model
    if (directory / GENERATION_CONFIG_FILE).is_file():  # the output's own defaults, not its base's
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    model.eval()
    return presets.LoadedModel(model, loaded.processor, loaded.transcriber, name or f"omniphi-{directory.name}",
                               read_model_card(directory))


# -- re-basing a chain of stages --------------------------------------------------------------------------
def flatten_trained(directory: str | Path, out: str | Path) -> dict:
    """Write the training output `directory` again as one output on the preset at the root of its
    chain of stages (stage 3 on stage 2's output on stage 1's on a preset): the adapter, and every
    non-LoRA weight any stage trained, with their final values. Shipping a model then needs no
    intermediate run directories (the committed starter weights are made this way).

    Only one stage of the chain may carry a LoRA adapter (adapters of two stages would have to be
    merged into the LLM first, and the result would no longer be small)."""
    import shutil

    from omniphi import presets

    directory, out = Path(directory), Path(out)
    chain = []  # (directory, meta), last stage first
    current = directory
    while True:
        meta = read_meta(current)
        chain.append((current, meta))
        base = resolve_base(meta, current)
        if base in presets.PRESETS:
            break
        if not is_training_output(base):
            raise TrainedOutputError(f"{current}: its base {base} is a model directory, not a preset or a training output")
        current = Path(base)
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
    (out / MARKER).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    copy_model_files(directory, out)
    return meta
