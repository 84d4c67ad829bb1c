"""omniphi's architecture inside vLLM: the same encoders, vLLM's own implementation of the LLM.

- The LLM (`language_model`) is built by vLLM from `text_config` (Llama, Qwen, … as vLLM implements
  them; Phi by `omniphi.vllm.phi`, as vLLM 0.32 has none of its own), so it gets paged attention,
  continuous batching and tensor parallelism.
- The vision tower + projector and the Whisper encoder + audio projector are omniphi's modules
  (`MediaEncoders`), run once per image or clip, so the features equal `omniphi ask`'s.
- Multimodal processing uses `OmniProcessor`'s own image preprocessing, audio windows and token
  counts: `<image>` becomes `image_seq_length` tokens, `<audio>` `audio_token_count(...)` tokens,
  exactly as `OmniProcessor` expands them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import torch
from torch import nn
from transformers import BatchFeature

from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

from omniphi.config import OmniConfig
from omniphi.vllm import PHI_ARCHITECTURE
from omniphi.model.audio_encoder import MEL_FRAMES_PER_WINDOW, audio_token_count
from omniphi.model.modeling import MediaEncoders
from omniphi.processing import SAMPLING_RATE, WINDOW_SAMPLES, OmniProcessor, pad_audio_windows

# Audio is profiled (and its encoder cache sized) at one full Whisper window, 30 s.
_PROFILED_AUDIO_SAMPLES = WINDOW_SAMPLES


@lru_cache(maxsize=4)
def _omni_processor(model_dir: str) -> OmniProcessor:
    return OmniProcessor.from_pretrained(model_dir)


class OmniProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> OmniConfig:
        return self.ctx.get_hf_config(OmniConfig)

    def omni_processor(self) -> OmniProcessor:
        return _omni_processor(self.ctx.model_config.model)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        config = self.get_hf_config()
        limits = {}
        if config.vision_config is not None:
            limits["image"] = None
        if config.audio_config is not None:
            limits["audio"] = None
        return limits

    def get_data_parser(self) -> MultiModalDataParser:
        # Clips arrive at any rate and channel count; OmniProcessor wants 16 kHz mono.
        # PyAV resamples (torchaudio, vLLM's default, does not load beside the CPU torch wheel).
        return MultiModalDataParser(target_sr=SAMPLING_RATE, target_channels=1, audio_resample_method="pyav",
                                    expected_hidden_size=self._get_expected_hidden_size(),
                                    allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        config = self.get_hf_config()
        tokens = {}
        if config.vision_config is not None:
            tokens["image"] = config.image_seq_length
        if config.audio_config is not None:
            tokens["audio"] = audio_token_count([MEL_FRAMES_PER_WINDOW], config.audio_stack_factor)
        return tokens


class OmniDummyInputsBuilder(BaseDummyInputsBuilder[OmniProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        config = self.info.get_hf_config()
        return config.image_token * mm_counts.get("image", 0) + config.audio_token * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions):
        config = self.info.get_hf_config()
        data = {}
        if config.vision_config is not None:
            data["image"] = self._get_dummy_images(width=config.image_size, height=config.image_size,
                                                   num_images=mm_counts.get("image", 0),
                                                   overrides=mm_options.get("image"))
        if config.audio_config is not None:
            data["audio"] = self._get_dummy_audios(length=_PROFILED_AUDIO_SAMPLES, num_audios=mm_counts.get("audio", 0),
                                                   overrides=mm_options.get("audio"))
        return data


class OmniMultiModalProcessor(BaseMultiModalProcessor[OmniProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Pixels and log-mel windows by OmniProcessor's own code (the prompt is tokenised by vLLM)."""
        processor = self.info.omni_processor()
        out = {}
        images = hf_data.get("images") or []
        if images:
            out["pixel_values"] = torch.stack([processor.preprocess_image(image) for image in images])
        clips = hf_data.get("audio") or []
        if clips:
            windows, windows_per_clip, tokens_per_clip = processor.clip_windows(clips)
            out["audio_features"], out["audio_feature_lengths"] = pad_audio_windows(windows)
            out["audio_clip_windows"] = torch.tensor(windows_per_clip)
            out["audio_token_count"] = torch.tensor(tokens_per_clip)
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        windows_per_clip = hf_inputs.get("audio_clip_windows", torch.zeros(0, dtype=torch.long))
        return dict(
            pixel_values=MultiModalFieldConfig.batched("image"),
            audio_features=MultiModalFieldConfig.flat_from_sizes("audio", windows_per_clip),
            audio_feature_lengths=MultiModalFieldConfig.flat_from_sizes("audio", windows_per_clip),
            audio_clip_windows=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
            audio_token_count=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        data = out_mm_kwargs.get_data()
        updates = []
        if config.vision_config is not None:
            updates.append(PromptReplacement(modality="image", target=[config.image_token_id],
                                             replacement=[config.image_token_id] * config.image_seq_length))
        if config.audio_config is not None:
            def audio_tokens(item: int) -> list[int]:
                return [config.audio_token_id] * int(data["audio_token_count"][item])

            updates.append(PromptReplacement(modality="audio", target=[config.audio_token_id], replacement=audio_tokens))
        return updates


@MULTIMODAL_REGISTRY.register_processor(OmniMultiModalProcessor, info=OmniProcessingInfo,
                                        dummy_inputs=OmniDummyInputsBuilder)
class OmniForConditionalGeneration(MediaEncoders, nn.Module, SupportsMultiModal):
    """vLLM's model for an omniphi directory (config.json `architectures`: OmniForConditionalGeneration)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        defaults = OmniConfig()
        if modality.startswith("image"):
            return defaults.image_token
        if modality.startswith("audio"):
            return defaults.audio_token
        raise ValueError(f"omniphi models take images and audio, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: OmniConfig = vllm_config.model_config.hf_config
        self.config = config
        placeholder_ids = [i for i in (config.image_token_id, config.audio_token_id) if i is not None]
        self.configure_mm_token_handling(vocab_size=config.text_config.vocab_size, mm_token_ids=placeholder_ids)
        with self._mark_tower_model(vllm_config, {"image", "audio"}):
            self.init_media_modules(config)
        # vLLM copies the top-level tie_word_embeddings onto the LLM's config (transformers v5 keeps it
        # on the class that holds both layers); in omniphi the LLM's own config decides, as it does
        # in AutoModelForCausalLM.from_config(text_config).
        config.tie_word_embeddings = getattr(config.text_config, "tie_word_embeddings", False)
        # A Phi LLM is omniphi's own vLLM Phi (omniphi/vllm/phi.py); any other, vLLM's implementation of it.
        architectures = [PHI_ARCHITECTURE] if config.text_config.model_type == "phi" else None
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=architectures)
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One [n_tokens, hidden] tensor per image or clip, modality by modality as vLLM passes them."""
        embeddings: list[torch.Tensor] = []
        for key in kwargs:  # vLLM groups items by modality; keep the order it gives
            if key == "pixel_values":
                pixel_values = _as_batch(kwargs["pixel_values"])
                embeddings += list(self.get_image_features(pixel_values))
            elif key == "audio_features":
                features = _pad_windows(kwargs["audio_features"])
                lengths = _flat(kwargs["audio_feature_lengths"])
                clip_windows = _flat(kwargs["audio_clip_windows"])
                embeddings += self.get_audio_features(features, lengths, clip_windows)
        return embeddings

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights)


def _as_batch(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.stack(list(value))


def _flat(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)
    return torch.cat([torch.as_tensor(v).reshape(-1) for v in value])


def _pad_windows(value) -> torch.Tensor:
    """Log-mel windows of several requests → one zero-padded [W, n_mels, T] batch."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1, *value.shape[-2:])
    windows = [w.reshape(-1, *w.shape[-2:]) for w in value]
    longest = max(w.shape[-1] for w in windows)
    return torch.cat([nn.functional.pad(w, (0, longest - w.shape[-1])) for w in windows])
