"""The `phi2-random` preset: random weights at the exact sizes of the mission's model, for speed only.

Phi-2 (microsoft/phi-2's config.json), CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336's
vision config) and Whisper-tiny (openai/whisper-tiny), built in seconds with no download, so
`omniphi bench` measures the real model's speed anywhere (speed does not depend on weight values).
Its answers are noise. The tokenizer is the tiny preset's Phi-2-style one (byte-level BPE, no BOS,
pad = eos): the LLM keeps Phi-2's 51,200 embedding rows; prompts tokenise to similar lengths.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    PhiConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

PHI2 = dict(
    vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, hidden_act="gelu_new", max_position_embeddings=2048, layer_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
    qk_layernorm=False, tie_word_embeddings=False,
)
CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
WHISPER_TINY = dict(
    vocab_size=51865, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
    decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, max_source_positions=1500,
    max_target_positions=448, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
    decoder_start_token_id=50258, suppress_tokens=[], begin_suppress_tokens=[],
)


_POOL_SIZE = 1 << 22


def _materialise(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Give a module built with meta parameters (real buffers) small random weights, fast: every
    weight is tiled from one pool of uniform values (each layer's own init would take minutes for
    2.7B parameters on a small CPU; values only need to be finite and not denormal); norms get 1/0."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.empty(_POOL_SIZE, dtype=torch.float32).uniform_(-0.02, 0.02, generator=generator).to(dtype)
    made: dict[int, torch.nn.Parameter] = {}  # tied weights stay tied
    offset = 0
    for module_name, sub in module.named_modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) not in made:
                tensor = torch.empty(parameter.shape, dtype=dtype)
                if "norm" in f"{module_name}.{name}".lower():
                    tensor.fill_(1.0 if name == "weight" else 0.0)
                else:
                    flat = tensor.view(-1)
                    for start in range(0, flat.numel(), _POOL_SIZE):
                        chunk = flat[start:start + _POOL_SIZE]
                        shift = offset % (_POOL_SIZE - chunk.numel() + 1)  # vary the tiles between tensors
                        chunk.copy_(pool[shift:shift + chunk.numel()])
                        offset += 7919
                made[id(parameter)] = torch.nn.Parameter(tensor, requires_grad=False)
            sub._parameters[name] = made[id(parameter)]
    for buffer_name, buffer in module.named_buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype and "inv_freq" not in buffer_name:
            buffer.data = buffer.data.to(dtype)
    return module.eval()


def phi2_random_parts(dtype: torch.dtype = torch.float32, seed: int = 0):
    """(language_model, tokenizer, vision_tower, whisper) at Phi-2 / CLIP-L/336 / Whisper-tiny sizes."""
    from omniphi.weights.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("phi")
    text_config = PhiConfig(**PHI2, pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary, positions) real
        language_model = AutoModelForCausalLM.from_config(text_config)
        vision_tower = CLIPVisionModel(CLIPVisionConfig(**CLIP_L_336))
        whisper = WhisperForConditionalGeneration(WhisperConfig(**WHISPER_TINY))
    for config_owner in (language_model, vision_tower, whisper):
        config_owner.config.dtype = dtype
    return (_materialise(language_model, dtype, seed), tokenizer, _materialise(vision_tower, dtype, seed + 1),
            _materialise(whisper, dtype, seed + 2))
