"""vLLM plugin: `vllm serve MODEL_DIR` serves an omniphi model directory with images and audio.

vLLM loads every `vllm.general_plugins` entry point (pyproject.toml) in each of its processes and
calls `register` before it reads a model's config. `register` teaches transformers the `omniphi`
config type and vLLM the `OmniForConditionalGeneration` architecture; the model class itself
(`omniphi.vllm.model`) is imported lazily, only when such a directory is served.

This package is the only part of omniphi that imports vLLM, and nothing in omniphi imports it.
vLLM pins its own transformers, so it runs from its own environment (`make vllm-venv`).
"""

from __future__ import annotations

ARCHITECTURE = "OmniForConditionalGeneration"  # what `save_pretrained` writes into config.json


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from omniphi.config import OmniConfig

    AutoConfig.register(OmniConfig.model_type, OmniConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "omniphi.vllm.model:OmniForConditionalGeneration")
