"""Exchange the image–text part of a model with transformers' `LlavaForConditionalGeneration` (llava-hf).

omniphi's module names follow Llava's, so both directions move whole modules or rename keys; no
tensor is reshaped. Audio parts have no Llava counterpart and are left out of an export.

Note for exported checkpoints: omniphi pads images to a square with the mean colour (LLaVA-1.5's
`pad`); transformers' CLIP image processor resizes and centre-crops instead. Feed the exported model
square images (or pad them) to get the answers omniphi gives.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from omniphi.presets import LoadedModel, assemble
from omniphi.templates import jinja_chat_template

_TO_LLAVA = [  # (omniphi prefix, transformers v5 Llava prefix)
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
]


def _rename(key: str) -> str | None:
    for ours, theirs in _TO_LLAVA:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return None  # audio parts


def llava_config(loaded: LoadedModel) -> LlavaConfig:
    cfg = loaded.model.config
    if cfg.vision_config is None:
        raise ValueError("this model has no vision tower: there is nothing to export to Llava")
    return LlavaConfig(
        vision_config=cfg.vision_config.to_dict(),
        text_config=cfg.text_config.to_dict(),
        image_token_id=cfg.image_token_id,
        projector_hidden_act=cfg.projector_hidden_act,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        vision_feature_layer=cfg.vision_feature_layer,
        image_seq_length=cfg.image_seq_length,
        multimodal_projector_bias=True,
        tie_word_embeddings=getattr(cfg.text_config, "tie_word_embeddings", False),
    )


def export_llava_hf(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write a directory that `LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor` load."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    config = llava_config(loaded)
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    state = {}
    for key, tensor in loaded.model.state_dict().items():
        renamed = _rename(key)
        if renamed is not None:
            state[renamed] = tensor
    expected = set(llava.state_dict())
    missing = expected - set(state)
    if config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise RuntimeError(f"export is missing {sorted(missing)[:5]}")
    llava.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        llava.tie_weights()
    llava.save_pretrained(out_dir)

    size = loaded.model.config.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=loaded.model.config.image_mean, image_std=loaded.model.config.image_std,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=loaded.processor.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=loaded.model.config.image_token,
        num_additional_image_tokens=1 if config.vision_config.model_type.startswith("clip") else 0,
        chat_template=jinja_chat_template(loaded.processor, with_audio=False),
    )
    processor.save_pretrained(out_dir)
    return out_dir


def import_llava_hf(source: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a llava-hf directory (or cached repo id) as an omniphi model (image–text; no audio)."""
    llava = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = llava.config
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(config.text_config)
    # Move the trained modules over as they are (shared tied weights stay shared).
    language_model.model = llava.model.language_model
    language_model.lm_head = llava.lm_head
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
    if image_token != "<image>":
        raise ValueError(f"the checkpoint's image token is {image_token!r}; omniphi expects '<image>'")
    mean = std = None
    try:
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(source)
        mean, std = list(image_processor.image_mean), list(image_processor.image_std)
    except OSError:
        pass
    model, processor = assemble(language_model, tokenizer, vision_tower=llava.model.vision_tower,
                                image_mean=mean, image_std=std)
    model.config.vision_feature_layer = config.vision_feature_layer
    model.config.vision_feature_select_strategy = config.vision_feature_select_strategy
    model.config.projector_hidden_act = config.projector_hidden_act
    model.multi_modal_projector.load_state_dict(llava.model.multi_modal_projector.state_dict())
    return LoadedModel(model.to(dtype), processor, None, f"omniphi-{Path(str(source)).name}")
