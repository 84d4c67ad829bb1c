"""Connectors from the encoders into the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class VisionProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: Linear(vision→llm) · GELU · Linear(llm→llm).

    Parameter names (linear_1, linear_2) match transformers' LlavaMultiModalProjector so that
    llava-hf checkpoints map onto it by renaming only.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, act: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class AudioProjector(nn.Module):
    """Ultravox-style: RMSNorm · Linear · SwiGLU · Linear · RMSNorm over stacked encoder frames.

    The input is `stack_factor` consecutive Whisper encoder frames concatenated (8 × 20 ms =
    160 ms per LLM token); the final norm keeps audio embeddings on the scale of text embeddings.
    """

    def __init__(self, audio_hidden: int, text_hidden: int, stack_factor: int = 8, hidden: int | None = None):
        super().__init__()
        stacked = audio_hidden * stack_factor
        hidden = hidden or text_hidden
        self.norm_in = RMSNorm(stacked)
        self.linear_1 = nn.Linear(stacked, 2 * hidden, bias=False)
        self.linear_2 = nn.Linear(hidden, text_hidden, bias=False)
        self.norm_out = RMSNorm(text_hidden)

    def forward(self, stacked_frames: torch.Tensor) -> torch.Tensor:
        gate, value = self.linear_1(self.norm_in(stacked_frames)).chunk(2, dim=-1)
        return self.norm_out(self.linear_2(nn.functional.silu(gate) * value))
