"""vLLM plugin: `vllm serve MODEL_DIR` serves an omniphi model directory with images and audio.

vLLM loads every `vllm.general_plugins` entry point (pyproject.toml) in each of its processes and
calls `register` before it reads a model's config. `register` teaches transformers the `omniphi`
config type and vLLM the `OmniForConditionalGeneration` architecture (and `OmniPhiForCausalLM`, its
LLM when that is a Phi); the model classes (`omniphi.vllm.model`, `omniphi.vllm.phi`) are imported
lazily, only when such a directory is served.

This package is the only part of omniphi that imports vLLM, and nothing in omniphi imports it.
vLLM pins its own transformers, so it runs from its own environment (`make vllm-venv`).
"""

from __future__ import annotations

ARCHITECTURE = "OmniForConditionalGeneration"  # what `save_pretrained` writes into config.json
PHI_ARCHITECTURE = "OmniPhiForCausalLM"  # omniphi.vllm.phi (vLLM 0.32 has no Phi of its own)


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from omniphi.config import OmniConfig

    AutoConfig.register(OmniConfig.model_type, OmniConfig, exist_ok=True)
    supported = ModelRegistry.get_supported_archs()
    if ARCHITECTURE not in supported:
        ModelRegistry.register_model(ARCHITECTURE, "omniphi.vllm.model:OmniForConditionalGeneration")
    if PHI_ARCHITECTURE not in supported:  # the LLM of an omniphi model whose text config is a Phi
        ModelRegistry.register_model(PHI_ARCHITECTURE, "omniphi.vllm.phi:OmniPhiForCausalLM")
