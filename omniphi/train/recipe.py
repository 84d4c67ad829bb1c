"""Training recipes: one YAML file per run, typed, with `--key value` overrides from the command line.

    stage: instruct                 # text | align | instruct | audio_words
    model: {base: starter, quantize: nf4}
    lora: {r: 128, alpha: 256, dropout: 0.05}
    data:
      train: [{format: llava, path: data/llava/llava_instruct_150k.json, image_folder: data/coco/train2017}]
      max_length: 2048
    training: {output_dir: runs/x, learning_rate: 2e-4, projector_lr: 2e-5, global_batch_size: 128}

Values are coerced to the field's type, so `learning_rate: 1e-3` works although YAML 1.1 (PyYAML)
reads "1e-3" as a string. Overrides address a field by its dotted path (`--training.learning_rate
1e-4`, `--data.train.0.path x.json`) or, when unambiguous, by its last name (`--learning_rate 1e-4`);
`--lora null` turns LoRA off. Unknown keys are errors: a typo must not silently train with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from omniphi.errors import UserError

STAGES = ("text", "align", "instruct", "audio_words")
DATA_FORMATS = ("llava", "llava_plain", "asr_manifest", "librispeech", "text")
ASR_FORMATS = ("asr_manifest", "librispeech")  # speech with its transcript


class RecipeError(UserError, ValueError):
    """The recipe or an override is invalid; the message names the key."""


@dataclass
class ModelSection:
    base: str = "starter"  # preset name or model / training-output directory
    init: Literal["pretrained", "scratch"] = "pretrained"  # scratch: the LLM starts random (text stage)
    text_config: dict = field(default_factory=dict)  # LLM config overrides for init: scratch
    quantize: Optional[Literal["nf4"]] = None  # nf4: the LLM's Linear layers in 4-bit NF4 + double quant (QLoRA)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 when training in bf16


@dataclass
class LoraSection:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Union[str, list[str]] = "auto"  # auto: the architecture's entry in omniphi.train.lora
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class DataSource:
    format: Literal["llava", "llava_plain", "asr_manifest", "librispeech", "text"]
    path: str
    image_folder: Optional[str] = None  # default: the JSON file's folder
    audio_folder: Optional[str] = None
    prompt: Optional[str] = "Transcribe the audio."  # ASR formats: the user text next to the audio (null: none)
    text_split: Literal["blank", "line"] = "blank"  # text format: documents separated by blank lines or one per line
    separator: Optional[str] = None  # text format: a line that separates documents (TinyStories: <|endoftext|>)
    limit: Optional[int] = None  # use only the first N samples
    # also pull the answers toward the base LLM's own next-token distributions (a KL term, the teacher
    # being the LLM with its LoRA off: omniphi/train/distill.py); text-only samples, training sources, LoRA
    distill: bool = False


@dataclass
class DataSection:
    train: list[DataSource] = field(default_factory=list)
    eval: list[DataSource] = field(default_factory=list)
    eval_fraction: float = 0.0  # hold out this fraction of train (seeded) when `eval` is empty
    max_length: int = 2048
    group_by_length: bool = False
    num_workers: int = 0


@dataclass
class TrainingSection:
    output_dir: str = ""
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # per device
    eval_batch_size: Optional[int] = None
    grad_accum: Optional[int] = None
    global_batch_size: Optional[int] = None  # batch_size × processes × grad_accum; sets grad_accum when given
    learning_rate: float = 2e-4  # the LLM (LoRA or full) and anything without its own rate
    projector_lr: Optional[float] = None  # default: learning_rate
    tower_lr: Optional[float] = None  # an unfrozen vision/audio tower; default: learning_rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    bf16: Union[bool, str] = "auto"  # auto: on CUDA devices that support it
    gradient_checkpointing: bool = False
    seed: int = 42
    data_seed: Optional[int] = None  # order of the samples; default: seed
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: Optional[int] = 3
    eval_steps: Optional[int] = None  # default: save_steps
    stop_after_steps: Optional[int] = None  # save a checkpoint and stop (the schedule still spans the whole run)
    ddp_find_unused_parameters: Optional[bool] = None  # default: true when a module may get no gradient
    deepspeed: Optional[str] = None  # a DeepSpeed JSON (or use `accelerate launch --config_file`)
    plots: bool = True
    distill_weight: float = 1.0  # the KL term of `distill` sources, per trained token, beside the LM loss


@dataclass
class AudioWordsSection:
    """The audio_words stage (omniphi/train/audio_words.py): the audio projector learns to spell
    each transcript as the LLM's word embeddings (CTC over cosines), without the LLM."""

    negatives: int = 2048  # CTC classes besides the transcripts' own tokens (all ~50k: ~20x slower)
    cosine_weight: float = 1.0  # pull each token onto the nearest of its own words or the blank
    norm_weight: float = 0.1  # keep each token as long as a word embedding
    blank: str = " "  # the CTC blank's text; must be one token
    cache_frames: bool = True  # Whisper's frames computed once (memory ~ clips × seconds); false: per step


@dataclass
class Recipe:
    stage: Literal["text", "align", "instruct", "audio_words"]
    training: TrainingSection = field(default_factory=TrainingSection)
    model: ModelSection = field(default_factory=ModelSection)
    lora: Optional[LoraSection] = None
    train_modules: Union[str, list[str]] = "auto"  # auto: the stage's default (see omniphi.train.freezing)
    data: DataSection = field(default_factory=DataSection)
    audio_words: AudioWordsSection = field(default_factory=AudioWordsSection)  # stage audio_words only
    name: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "Recipe":
        t, m = self.training, self.model
        if self.stage not in STAGES:
            raise RecipeError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if not t.output_dir:
            raise RecipeError("training.output_dir is required")
        if not self.data.train:
            raise RecipeError("data.train needs at least one source")
        if self.stage == "audio_words":
            self._validate_audio_words()
        if m.init == "scratch" and self.stage != "text":
            raise RecipeError("model.init: scratch is for the text stage")
        if m.init == "scratch" and (self.lora is not None or m.quantize):
            raise RecipeError("a model trained from scratch trains all its weights: remove lora / model.quantize")
        if self.stage == "align" and self.lora is not None:
            raise RecipeError("the align stage trains projectors (and optionally towers), not LoRA: use stage instruct")
        if m.quantize and self.lora is None and self.stage != "align":
            raise RecipeError("model.quantize: nf4 freezes the LLM in 4-bit: it needs lora (QLoRA) or the align stage")
        for name in ("batch_size", "logging_steps", "save_steps"):
            if getattr(t, name) < 1:
                raise RecipeError(f"training.{name} must be at least 1")
        if t.grad_accum is not None and t.grad_accum < 1:
            raise RecipeError("training.grad_accum must be at least 1")
        if t.grad_accum is not None and t.global_batch_size is not None:
            raise RecipeError("give training.grad_accum or training.global_batch_size, not both")
        if t.learning_rate <= 0:
            raise RecipeError("training.learning_rate must be positive")
        if not 0 <= t.warmup_ratio < 1:
            raise RecipeError("training.warmup_ratio must be in [0, 1)")
        if t.max_steps <= 0 and t.epochs <= 0:
            raise RecipeError("set training.epochs or training.max_steps")
        if not isinstance(t.bf16, bool) and t.bf16 != "auto":
            raise RecipeError("training.bf16 must be true, false or auto")
        if not 0 <= self.data.eval_fraction < 1:
            raise RecipeError("data.eval_fraction must be in [0, 1)")
        if self.data.max_length < 8:
            raise RecipeError("data.max_length is too small")
        if self.lora is not None and (self.lora.r < 1 or self.lora.alpha <= 0):
            raise RecipeError("lora.r and lora.alpha must be positive")
        self._validate_distill()
        return self

    def _validate_distill(self) -> None:
        distilled = [s for s in self.data.train if s.distill]
        if any(s.distill for s in self.data.eval):
            raise RecipeError("data.eval: distill applies to training sources only (evaluation reports the LM loss)")
        if self.training.distill_weight < 0:
            raise RecipeError("training.distill_weight must be at least 0")
        if not distilled:
            return
        if self.lora is None:
            raise RecipeError(f"data source {distilled[0].path}: distill needs lora (the teacher is the LLM with its LoRA off)")
        spoken = [s for s in distilled if s.format in ASR_FORMATS]
        if spoken:
            raise RecipeError(f"data source {spoken[0].path}: distill takes text-only samples, not {spoken[0].format}")

    def _validate_audio_words(self) -> None:
        if self.lora is not None or self.model.quantize or self.model.init != "pretrained":
            raise RecipeError("the audio_words stage trains the audio projector only: remove lora / model.quantize / init")
        if not (self.train_modules == "auto" or name_list(self.train_modules) == ["audio_projector"]):
            raise RecipeError("the audio_words stage trains the audio projector only: train_modules auto or [audio_projector]")
        bad = [s.format for s in [*self.data.train, *self.data.eval] if s.format not in ASR_FORMATS]
        if bad:
            raise RecipeError(f"the audio_words stage reads speech with transcripts ({', '.join(ASR_FORMATS)}), not {bad[0]}")


# -- typed construction ------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` (from YAML or a command-line string) as an instance of the annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        options = [a for a in args if a is not type(None)]
        scalars = [a for a in options if a is not str and typing.get_origin(a) is not list]
        lists = [a for a in options if typing.get_origin(a) is list]
        order = scalars + lists + ([str] if str in options else [])
        if isinstance(value, str) and str in options and not value.strip().startswith("["):
            # A plain string stays one ("auto"; "a,b" is split by the field's user), after the
            # scalar types had their chance ("true" for a bool-or-"auto" field).
            order = scalars + [str]
        errors = []
        for option in order:
            try:
                return _coerce(value, option, where)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[-1] if errors else f"{where}: unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise RecipeError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls, mapping: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise RecipeError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in mapping:
            kwargs[f.name] = _coerce(mapping[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise RecipeError(f"missing required key {where + '.' if where else ''}{f.name}")
    return cls(**kwargs)


# -- overrides -----------------------------------------------------------------------------------------
def _leaf_paths(cls, prefix: str = "") -> list[str]:
    """Dotted paths of the scalar fields reachable without going through a list."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
        nested = [a for a in inner if dataclasses.is_dataclass(a)]
        path = f"{prefix}{f.name}"
        if nested:
            paths.append(path)
            paths += _leaf_paths(nested[0], path + ".")
        else:
            paths.append(path)
    return paths


def _resolve_key(key: str) -> str:
    key = key.replace("-", "_")
    if "." in key:
        return key
    matches = [p for p in _leaf_paths(Recipe) if p == key or p.endswith("." + key)]
    exact = [p for p in matches if p == key]
    if exact:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RecipeError(f"unknown recipe key --{key}")
    raise RecipeError(f"--{key} is ambiguous ({', '.join(matches)}): give the full dotted key")


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict, key: str, value: str) -> None:
    """Set the dotted `key` in the raw recipe mapping (before typing) to the YAML-parsed `value`."""
    path = _resolve_key(key).split(".")
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise RecipeError(f"--{key}: no list item {part!r}") from None
            continue
        child = node.get(part)
        if child is None:  # e.g. `--lora.r 8` on a recipe without LoRA: start from the defaults
            child = {}
            node[part] = child
        node = child
    last = path[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = _parse_scalar(value)
        except (ValueError, IndexError):
            raise RecipeError(f"--{key}: no list item {last!r}") from None
    else:
        node[last] = _parse_scalar(value)


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """["--lr", "1e-4", "--lora.r=8"] → [("lr", "1e-4"), ("lora.r", "8")]."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise RecipeError(f"expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise RecipeError(f"--{key} needs a value")
            value = tokens[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def name_list(value: str | list[str]) -> list[str]:
    """A list field that also accepts "a,b" (handy on the command line)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def load_recipe(source: str | Path | dict, overrides: list[tuple[str, str]] | None = None) -> Recipe:
    """A validated Recipe from a YAML file (or a mapping) with overrides applied."""
    if isinstance(source, dict):
        raw = yaml.safe_load(yaml.safe_dump(source))  # a deep copy that only holds YAML types
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(f"recipe not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise RecipeError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a YAML mapping")
    for key, value in overrides or []:
        apply_override(raw, key, value)
    return _build(Recipe, raw).validate()
