"""What the word-space pre-stages share (the audio_words stage, omniphi/train/audio_words.py, and
the starter's vision step, omniphi/starter/vision.py): both train tokens to *be* the LLM's word
embeddings, scored by cosine against a frozen copy of its input embeddings, with a learned softmax
temperature as in CLIP, and kept as long as word embeddings (the LLM's layers expect that scale)."""

from __future__ import annotations

import math

import torch
from torch import nn


class WordSpace(nn.Module):
    def __init__(self, language_model):
        super().__init__()
        table = language_model.get_input_embeddings().weight.detach()
        self.register_buffer("typical_norm", table.float().norm(dim=-1).median())
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> torch.Tensor:
        """The softmax temperature's inverse, capped as CLIP caps it."""
        return self.log_scale.exp().clamp(max=100)

    def norm_penalty(self, tokens: torch.Tensor) -> torch.Tensor:
        """Squared log ratio of each token's length to a typical word embedding's."""
        return (tokens.float().norm(dim=-1) / self.typical_norm).log().pow(2).mean()
