"""OmniForConditionalGeneration: an LLM that reads image and audio embeddings in place of placeholders.

Submodule names mirror transformers' (legacy-layout) `LlavaForConditionalGeneration` checkpoints:
`vision_tower`, `multi_modal_projector.linear_1/linear_2`, `language_model` (a full causal LM with
its head), so the image–text part exports to llava-hf by renaming. Audio adds `audio_tower`
(Whisper's encoder) and `audio_projector`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omniphi.config import OmniConfig
from omniphi.model.audio_encoder import encode_windows, stack_frames
from omniphi.model.projectors import AudioProjector, VisionProjector


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is a target in some row of the batch (labels ≠ -100): where the
    LM loss needs logits, in order."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)


def loss_divisor(labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """What a summed per-token loss is divided by: the target count of the whole accumulated batch when
    the Trainer gives it (`num_items_in_batch`), else this batch's count of next-token targets."""
    count = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
    return torch.as_tensor(count, device=labels.device)


class PlaceholderMismatchError(ValueError):
    """The prompt's placeholder tokens and the media features disagree in number."""


class OmniPreTrainedModel(PreTrainedModel):
    config_class = OmniConfig
    config: OmniConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules: list[str] = []

    def _init_weights(self, module):
        # Only our own modules start random here; the towers and LLM initialise themselves.
        if isinstance(module, (VisionProjector, AudioProjector)):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=0.02)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)


class MediaEncoders:
    """The image and audio paths from pixels / log-mel windows to LLM embeddings.

    Shared by `OmniForConditionalGeneration` and the vLLM model in `omniphi.vllm`, so both compute
    the same features from the same weights. Needs `config` (an OmniConfig) and the modules
    `vision_tower`, `multi_modal_projector`, `audio_tower`, `audio_projector` (None where absent),
    which `init_media_modules` creates.
    """

    def init_media_modules(self, config: OmniConfig) -> None:
        text_hidden = config.text_config.hidden_size
        self.vision_tower = None
        self.multi_modal_projector = None
        if config.vision_config is not None:
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.multi_modal_projector = VisionProjector(
                config.vision_config.hidden_size, text_hidden, config.projector_hidden_act
            )
        self.audio_tower = None
        self.audio_projector = None
        if config.audio_config is not None:
            self.audio_tower = WhisperEncoder(config.audio_config)
            self.audio_projector = AudioProjector(
                config.audio_config.d_model, text_hidden, config.audio_stack_factor, config.audio_projector_hidden_size
            )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n_images, 3, H, W] → [n_images, image_seq_length, llm_hidden]."""
        return self.multi_modal_projector(self.vision_features(pixel_values))

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's features the projector reads: [n_images, image_seq_length, vision_hidden]."""
        if self.vision_tower is None:
            raise ValueError("this model has no vision tower, it cannot take images")
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values, output_hidden_states=True)
        features = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]  # drop CLS
        return features

    def get_audio_features(
        self, audio_features: torch.Tensor, audio_feature_lengths: torch.Tensor, audio_clip_windows: torch.Tensor
    ) -> list[torch.Tensor]:
        """Padded log-mel windows → one [n_tokens, llm_hidden] tensor per clip.

        audio_features [W, n_mels, T]; audio_feature_lengths [W] (real frames per window);
        audio_clip_windows [n_clips] (how many consecutive windows make each clip).
        """
        if self.audio_tower is None:
            raise ValueError("this model has no audio tower, it cannot take audio")
        windows = encode_windows(self.audio_tower, audio_features, audio_feature_lengths)
        clips, start = [], 0
        for n_windows in audio_clip_windows.tolist():
            frames = torch.cat(windows[start : start + n_windows], dim=0)
            start += n_windows
            stacked = stack_frames(frames, self.config.audio_stack_factor)
            clips.append(self.audio_projector(stacked.to(self.audio_projector.linear_1.weight.dtype)))
        return clips


class OmniForConditionalGeneration(MediaEncoders, OmniPreTrainedModel, GenerationMixin):
    def __init__(self, config: OmniConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.init_media_modules(config)
        self.post_init()

    # -- plumbing transformers and peft expect -------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs):
        embeddings = self.language_model.resize_token_embeddings(*args, **kwargs)
        self.config.text_config.vocab_size = self.language_model.config.vocab_size
        return embeddings

    def _scatter(self, input_ids, embeds, token_id, features, what):
        mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0]
        if n_tokens != n_features:
            raise PlaceholderMismatchError(
                f"{what} placeholders and features do not match: the prompt has {n_tokens} {what} tokens "
                f"but the {what} inputs give {n_features} embeddings"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_feature_lengths: torch.Tensor | None = None,
        audio_clip_windows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image and audio features scattered into their placeholders."""
        cfg = self.config
        ids = input_ids
        # Placeholder ids may lie past the embedding table of an LLM that was not resized;
        # they are overwritten below, so embed them as id 0.
        safe_ids = ids.clone()
        for token_id in (cfg.image_token_id, cfg.audio_token_id):
            if token_id is not None:
                safe_ids[ids == token_id] = 0
        embeds = self.get_input_embeddings()(safe_ids)

        image_features = (
            self.get_image_features(pixel_values).flatten(0, 1)
            if pixel_values is not None and pixel_values.shape[0] > 0
            else embeds.new_zeros(0, embeds.shape[-1])
        )
        if cfg.image_token_id is not None:
            embeds = self._scatter(ids, embeds, cfg.image_token_id, image_features, "image")
        elif image_features.shape[0]:
            raise PlaceholderMismatchError("images given but the model has no image token")

        if audio_features is not None and audio_features.shape[0] > 0:
            audio = torch.cat(self.get_audio_features(audio_features, audio_feature_lengths, audio_clip_windows), 0)
        else:
            audio = embeds.new_zeros(0, embeds.shape[-1])
        if cfg.audio_token_id is not None:
            embeds = self._scatter(ids, embeds, cfg.audio_token_id, audio, "audio")
        elif audio.shape[0]:
            raise PlaceholderMismatchError("audio given but the model has no audio token")
        return embeds

    # -- forward / generate -------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_feature_lengths: torch.Tensor | None = None,
        audio_clip_windows: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(
                input_ids, pixel_values, audio_features, audio_feature_lengths, audio_clip_windows
            )
        if labels is None or "logits_to_keep" in kwargs:
            return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        return self._forward_with_loss(inputs_embeds, attention_mask, labels, **kwargs)

    def _forward_with_loss(self, inputs_embeds, attention_mask, labels, num_items_in_batch=None, **kwargs):
        """The LM loss with logits computed only where some row of the batch has a target.
        Why: the answers are a small part of a multimodal sample (the image tokens, the prompt and the
        question have no targets), and the LM head over SmolLM2's 49k vocabulary at every position
        costs as much as a fifth of a training step. Same value as the LLM's own loss: targets are
        the next token, -100 is ignored, the sum is divided by `num_items_in_batch` (the target count
        of the whole accumulated batch) when the Trainer gives it, else by this batch's count."""
        keep = target_positions(labels)
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      logits_to_keep=keep, **kwargs)
        targets = labels[:, 1:][:, keep]
        loss = nn.functional.cross_entropy(outputs.logits.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=-100, reduction="sum")
        outputs.loss = loss / loss_divisor(labels, num_items_in_batch).to(loss.device, loss.dtype)
        return outputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_feature_lengths: torch.Tensor | None = None,
        audio_clip_windows: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Encode the media once, then let the LLM's own `generate` (KV cache, sampling, stopping
        criteria, streamers) continue from the embeddings. Returns only the new tokens."""
        embeds = self.embed_inputs(input_ids, pixel_values, audio_features, audio_feature_lengths, audio_clip_windows)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
