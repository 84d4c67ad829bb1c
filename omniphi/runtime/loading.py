"""`load(spec, device=, dtype=, quantize=)`: the one way to get a model ready to answer.

A spec is a preset name (`omniphi.presets`), a model directory (`save_directory` writes one), or a
training output (`omniphi.runtime.trained`). `auto` options resolve in this order: what the user
passed, the model's recorded preference (`runtime_defaults.json` in a model directory, or the
preset's `PRESET_DEFAULTS`; a training output inherits its base's), then the machine:

- device auto: CUDA when present, else the CPU;
- dtype auto: bfloat16 on CUDA, and on a CPU where a bf16 matmul measures faster than float32
  (`omniphi.runtime.devices`); float32 otherwise;
- quantize auto: none;
- media_placement auto: the model's own (`omniphi.templates`), else as_given.

Quantising (int8/int4 weight-only, LLM Linear layers only) happens here, once, after the model is on
its device; then the model is switched to `fast_ops`' GELU and decode attention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omniphi import presets
from omniphi.errors import UserError
from omniphi.chat import GenerationSettings
from omniphi.model_card import (GENERATION_CONFIG_FILE, ModelCard, generation_defaults, read_model_card,
                                read_transcription_prompt, write_transcription_prompt)
from omniphi.presets import TRANSCRIBER_DIR, LoadedModel
from omniphi.runtime import trained
from omniphi.runtime.devices import resolve_device, resolve_dtype
from omniphi.runtime.fast_ops import install_fast_ops
from omniphi.runtime.quantize import QUANTIZATIONS, quantize_language_model_
from omniphi.templates import check_media_placement

DEFAULTS_FILE = "runtime_defaults.json"  # {"device": ..., "dtype": ..., "quantize": ...}, each optional


class ModelSpecError(UserError, ValueError):
    """The spec names no preset, model directory or training output."""


@dataclass(frozen=True)
class RuntimeChoice:
    """What `load` decided (the model records it as `model.runtime_choice`, e.g. for `omniphi bench`)."""

    device: torch.device
    dtype: torch.dtype
    quantize: str


def load(spec: str = "starter", *, device: str = "auto", dtype: str | torch.dtype = "auto",
         quantize: str = "none", media_placement: str = "auto") -> LoadedModel:
    """Load a preset, model directory or training output onto `device` in `dtype`, its LLM weights
    quantised as asked. Raises a `UserError` (one clear line) for an unknown spec, a device that is
    not there, or parts that are not installed."""
    if media_placement != "auto":
        try:
            check_media_placement(media_placement)
        except ValueError as error:
            raise ModelSpecError(f"{error} (or auto)") from None
    preferred = preferred_defaults(spec)
    choice = resolve_choice(device, dtype, quantize, preferred)
    loaded = load_weights(spec, dtype=choice.dtype)
    if media_placement != "auto":
        loaded.model.config.media_placement = media_placement
    loaded.model.to(choice.device)
    if loaded.transcriber is not None:
        loaded.transcriber.model.to(choice.device)
    if choice.quantize != "none":
        quantize_language_model_(loaded.model.language_model, choice.quantize)
    install_fast_ops(loaded.model)
    loaded.model.runtime_choice = choice
    return loaded


def resolve_choice(device: str, dtype: str | torch.dtype, quantize: str, preferred: dict[str, str]) -> RuntimeChoice:
    if quantize == "auto":
        quantize = preferred.get("quantize", "none")
    if quantize not in QUANTIZATIONS:
        raise ModelSpecError(f"quantize must be one of {', '.join(QUANTIZATIONS)} or auto, not {quantize!r}")
    if device == "auto":
        device = preferred.get("device", "auto")
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "auto"  # a model's wish for a GPU on a machine without one is no error
    target = resolve_device(device)
    if dtype == "auto":
        dtype = preferred.get("dtype", "auto")
    return RuntimeChoice(target, resolve_dtype(dtype, target), quantize)


def preferred_defaults(spec: str) -> dict[str, str]:
    """The model's recorded preferences for `auto`: its directory's runtime_defaults.json, else the
    nearest base's in its chain of training stages, else its root preset's."""
    directory = _directory_of(spec)
    if directory is None:
        return dict(presets.PRESET_DEFAULTS.get(spec, {}))
    candidates = [directory]
    root = spec
    if trained.is_training_output(directory):
        chain, root = trained.training_chain(directory)  # raises on a chain that loops
        candidates = [stage for stage, _ in chain] + ([Path(root)] if _directory_of(root) else [])
    for candidate in candidates:
        path = candidate / DEFAULTS_FILE
        if path.is_file():
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError) as error:
                raise ModelSpecError(f"cannot read {path}: {error}") from None
    return dict(presets.PRESET_DEFAULTS.get(root, {}))


def _directory_of(spec: str) -> Path | None:
    packaged = presets.packaged_directory(spec)
    if packaged is not None:
        return packaged[0] if trained.is_training_output(packaged[0]) else None
    if spec in presets.PRESETS:
        return None
    return Path(spec) if Path(spec).is_dir() else None


# -- weights ------------------------------------------------------------------------------------------
def load_weights(spec: str, *, dtype: torch.dtype = torch.float32, merge: bool = True,
                 name: str | None = None) -> LoadedModel:
    """The model on the CPU in `dtype`, before device placement and quantisation.

    merge=False keeps a training output's LoRA adapter as a PEFT model (to compare with the merged one)."""
    packaged = presets.packaged_directory(spec)
    if packaged is not None:
        directory, fallback = packaged
        if trained.is_training_output(directory):
            return load_weights(str(directory), dtype=dtype, merge=merge, name=name or f"omniphi-{spec}")
        return load_weights(fallback, dtype=dtype, merge=merge, name=name)
    if spec in presets.PRESETS:
        loaded = presets.build(spec, dtype=dtype)
        return LoadedModel(loaded.model, loaded.processor, loaded.transcriber, name or loaded.name, loaded.card)
    path = Path(spec)
    if not path.is_dir():
        raise ModelSpecError(f"unknown model {spec!r}: expected one of {', '.join(presets.PRESETS)} or a model directory")
    if trained.is_training_output(path):
        return _load_training_output(path, dtype=dtype, merge=merge, name=name)
    return _load_directory(path, dtype=dtype, name=name)


def _load_training_output(directory: Path, *, dtype: torch.dtype, merge: bool, name: str | None) -> LoadedModel:
    chain, root = trained.training_chain(directory)
    loaded = load_weights(root, dtype=dtype)
    for index, (stage_dir, meta) in enumerate(reversed(chain)):
        last = index == len(chain) - 1
        trained.apply_stage(loaded.model, stage_dir, meta, dtype=dtype, merge=merge or not last)
    if (directory / GENERATION_CONFIG_FILE).is_file():  # the output's own defaults, not its base's
        from transformers import GenerationConfig

        loaded.model.generation_config = GenerationConfig.from_pretrained(directory)
    _set_transcription_prompt(loaded.transcriber, directory)  # the output's own too
    return LoadedModel(loaded.model, loaded.processor, loaded.transcriber, name or f"omniphi-{directory.name}",
                       read_model_card(directory))


def _load_directory(directory: Path, *, dtype: torch.dtype, name: str | None) -> LoadedModel:
    from omniphi.model import OmniForConditionalGeneration
    from omniphi.processing import OmniProcessor

    if not (directory / "config.json").exists():
        raise ModelSpecError(f"{directory} is not an omniphi model directory (no config.json)")
    model = OmniForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()
    processor = OmniProcessor.from_pretrained(directory, model.config)
    transcriber = _directory_transcriber(directory, dtype=dtype)
    return LoadedModel(model, processor, transcriber, name or f"omniphi-{directory.name}", read_model_card(directory))


def _directory_transcriber(directory: Path, *, dtype: torch.dtype | str):
    """The Whisper a model directory keeps for transcripts (TRANSCRIBER_DIR), with the directory's
    prompt for it; None where it keeps none."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from omniphi.asr import Transcriber

    source = directory / TRANSCRIBER_DIR
    if not (source / "config.json").exists():
        return None
    transcriber = Transcriber(WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype),
                              WhisperProcessor.from_pretrained(source))
    _set_transcription_prompt(transcriber, directory)
    return transcriber


def _set_transcription_prompt(transcriber, directory: Path) -> None:
    """A model directory's prompt for its speech recogniser (omniphi.model_card), if it has one."""
    try:
        prompt = read_transcription_prompt(directory)
    except ValueError as error:
        raise ModelSpecError(str(error)) from None
    if transcriber is not None and prompt is not None:
        transcriber.prompt = prompt


@dataclass(frozen=True)
class ModelDescription:
    """What a model says about itself, read from its files without loading any weights."""

    name: str
    card: ModelCard | None
    generation_defaults: GenerationSettings


def describe(spec: str) -> ModelDescription:
    """The name `load` would give the model, its card and its generation defaults (greedy where it
    says nothing): for a server whose LLM runs elsewhere (`omniphi serve --engine vllm`)."""
    from transformers import GenerationConfig

    directory, name = None, spec
    packaged = presets.packaged_directory(spec)
    if packaged is not None:
        if trained.is_training_output(packaged[0]):
            directory, name = packaged[0], f"omniphi-{spec}"
        else:
            spec = name = packaged[1]
    if directory is None and spec not in presets.PRESETS:
        directory = Path(spec)
        if not directory.is_dir():
            raise ModelSpecError(f"unknown model {spec!r}: expected one of {', '.join(presets.PRESETS)} or a model directory")
        name = f"omniphi-{directory.name}"
    if directory is None:
        return ModelDescription(name, None, generation_defaults(None))
    config = None
    if (directory / GENERATION_CONFIG_FILE).is_file():
        config = GenerationConfig.from_pretrained(directory)
    return ModelDescription(name, read_model_card(directory), generation_defaults(config))


def save_directory(loaded: LoadedModel, directory: str | Path, *, defaults: dict[str, str] | None = None) -> None:
    """A self-contained model directory: model (safetensors) + processor + Whisper for transcripts,
    and optionally the device/dtype/quantize it prefers when a user asks for `auto`."""
    directory = Path(directory)
    loaded.model.save_pretrained(directory)
    loaded.processor.save_pretrained(directory)
    if loaded.transcriber is not None:
        loaded.transcriber.save_pretrained(directory / TRANSCRIBER_DIR)
        if loaded.transcriber.prompt:
            write_transcription_prompt(directory, loaded.transcriber.prompt)
    if defaults:
        (directory / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")


def load_transcriber(spec: str = "starter"):
    """Only the speech recogniser of a model (fast: no LLM or vision tower is loaded)."""
    from omniphi.runtime.transcripts import TranscriptionUnavailableError

    transcriber = None
    directory = _directory_of(spec)  # the packaged starter's too
    if directory is None and spec in presets.PRESETS:
        transcriber = presets.load_preset_transcriber(spec)
    elif directory is not None:
        chain_root = str(directory)
        if trained.is_training_output(directory):
            _, chain_root = trained.training_chain(directory)
        if chain_root in presets.PRESETS:
            transcriber = presets.load_preset_transcriber(chain_root)
        else:  # in the dtype it was saved in (transformers' "auto")
            transcriber = _directory_transcriber(Path(chain_root), dtype="auto")
        _set_transcription_prompt(transcriber, directory)  # a training output's own prompt wins
    else:
        raise ModelSpecError(f"unknown model {spec!r}: expected one of {', '.join(presets.PRESETS)} or a model directory")
    if transcriber is None:
        raise TranscriptionUnavailableError(f"the model {spec!r} has no speech recogniser")
    return transcriber
