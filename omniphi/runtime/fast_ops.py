"""Faster equivalents of two transformers paths that dominate a CPU decode step besides the weights.

`install_fast_ops(model)` runs once at load (`omniphi.runtime.load`). The replacements compute the
same functions; only rounding differs (they are, if anything, more precise):

- **GELU (tanh form)**: transformers' `NewGELUActivation` (Phi's `gelu_new`) is five element-wise ops;
  in bf16 on this CPU they cost ~100× torch's fused `gelu(approximate="tanh")`, the same formula.
- **Attention for one new token per row** (decoding): SDPA's CPU flash kernel is tuned for long
  queries; for a single query two small matmuls over the cached keys and values (with grouped-query
  heads as a reshape, not a copy) are several times faster. Longer queries (prefill) and other
  devices keep SDPA.
- **The LLM's Linear layers in bf16/fp16 for a few rows** (decoding one to a few sequences): on CPUs
  with AMX torch's `linear` reads a half-precision weight well below the memory bandwidth for a row
  vector, while the same product as a matrix-vector product (`mv`, or weight @ input^T for several
  rows) reads it near the bandwidth; on others (an AVX-512-bf16 EPYC) it is the other way round, so
  the `--dtype auto` probe decides, once per machine (devices.cpu_bf16_mv_is_faster). float32 and
  longer inputs keep `linear`, which is as fast or faster there.

Measured by bench/decode_ops.py (numbers in the README, "Speed: the inference engine").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.activations import NewGELUActivation
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from omniphi.runtime import devices

DECODE_ATTENTION = "omniphi_decode_sdpa"  # the name models are switched to (transformers' AttentionInterface)


def decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one query per row on the CPU (see module docstring).

    query [batch, heads, q, dim], key/value [batch, kv_heads, length, dim]; returns [batch, q, heads, dim]."""
    batch, heads, q_length, dim = query.shape
    plain = (q_length == 1 and query.device.type == "cpu" and not dropout and kwargs.get("softcap") is None
             and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None)
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads  # query head h reads key/value head h // groups (as repeat_kv lays them out)
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(query.reshape(batch, kv_heads, groups, dim), key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, :length]  # [batch, 1 or heads, 1, length]
        mask = mask.reshape(batch, kv_heads, groups, length) if mask.shape[1] == heads else mask
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(probs, value)  # [batch, kv_heads, groups, dim]
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


# The masks transformers builds for it are SDPA's (boolean, True = attend; None where none is needed).
AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


FEW_ROWS = 32  # up to this many rows (the sequences of a decode batch) a Linear runs as matrix @ vectors
HALF_PRECISION = (torch.bfloat16, torch.float16)


class FewRowLinear(nn.Linear):
    """nn.Linear whose CPU products in half precision for at most FEW_ROWS rows are computed as the
    weight times the inputs where this CPU runs them faster that way (see the module docstring);
    everything else is `F.linear`. Same parameters and state-dict keys as nn.Linear: `install_fast_ops`
    switches a layer's class in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (rows > FEW_ROWS or x.device.type != "cpu" or x.dtype not in HALF_PRECISION
                or self.weight.dtype != x.dtype or not devices.cpu_bf16_mv_is_faster()):
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        y = torch.mv(self.weight, flat[0])[None] if rows == 1 else torch.matmul(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def install_fast_ops(model: nn.Module) -> None:
    """Switch `model` (an omniphi model, or any transformers LLM) to the fast paths, in place."""
    language_model = getattr(model, "language_model", model)
    for module in language_model.modules():
        if type(module) is nn.Linear:
            # a class switch keeps the very same parameters (and so tied output heads and LoRA's base layers)
            module.__class__ = FewRowLinear
    for parent in list(language_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, nn.GELU(approximate="tanh"))
    if getattr(language_model.config, "_attn_implementation", None) in ("sdpa", None):
        language_model.set_attn_implementation(DECODE_ATTENTION)
