"""OmniConfig: one transformers config holding the LLM, vision and audio sub-configs.

Field names follow transformers' `LlavaConfig` where they mean the same thing (text_config,
vision_config, image_token_id, vision_feature_layer, vision_feature_select_strategy,
projector_hidden_act) so that export to llava-hf is a renaming, not a translation.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


def _sub_config(value, default_type: str | None = None):
    """A sub-config from a dict (as read from config.json) or a config object."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", default_type)
    return AutoConfig.for_model(model_type, **value)


class OmniConfig(PretrainedConfig):
    model_type = "omniphi"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "audio_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        audio_config=None,
        image_token_id: int | None = None,
        audio_token_id: int | None = None,
        image_token: str = "<image>",
        audio_token: str = "<audio>",
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",  # "default": drop CLS; "full": keep all tokens
        projector_hidden_act: str = "gelu",
        audio_stack_factor: int = 8,
        audio_projector_hidden_size: int | None = None,
        chat_template_name: str = "auto",  # a name in omniphi.templates, or "auto" (tokenizer's own, else llava-phi)
        media_placement: str = "as_given",  # omniphi.templates.MEDIA_PLACEMENTS: where a message's media go
        image_size: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        self.text_config = _sub_config(text_config, "phi")
        self.vision_config = _sub_config(vision_config, "clip_vision_model")
        self.audio_config = _sub_config(audio_config, "whisper")
        self.image_token_id = image_token_id
        self.audio_token_id = audio_token_id
        self.image_token = image_token
        self.audio_token = audio_token
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.projector_hidden_act = projector_hidden_act
        self.audio_stack_factor = audio_stack_factor
        self.audio_projector_hidden_size = audio_projector_hidden_size
        self.chat_template_name = chat_template_name
        self.media_placement = media_placement
        if self.vision_config is not None and image_size is None:
            image_size = self.vision_config.image_size
        self.image_size = image_size
        # CLIP's normalisation unless the tower came with its own (SigLIP uses 0.5/0.5).
        self.image_mean = image_mean or [0.48145466, 0.4578275, 0.40821073]
        self.image_std = image_std or [0.26862954, 0.26130258, 0.27577711]
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def image_seq_length(self) -> int:
        """Number of LLM tokens one image becomes (576 for CLIP-L/14 at 336 px)."""
        if self.vision_config is None:
            return 0
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return patches if self.vision_feature_select_strategy == "default" else patches + self._has_cls()

    def _has_cls(self) -> int:
        return 1 if self.vision_config.model_type.startswith("clip") else 0
