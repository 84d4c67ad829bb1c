"""Replay by distillation: on samples of a recipe source marked ``distill: true``, the LoRA is also pulled
toward the base LLM's own next-token distributions.

Why: replaying text the base wrote (omniphi/starter/replay.py) keeps a fine-tuned LLM near the base only
through the one token sampled at each position. The base's whole distribution over the vocabulary at that
position says far more per token, and it cannot be memorised the way a few dozen sampled texts can. The
teacher costs no second model in memory: it is the same LLM with its LoRA switched off (PEFT's
``disable_adapter``), so it exists only where the recipe trains a LoRA.

The term, at every trained position (label ≠ -100) of a marked sample, is KL(base ‖ trained) over the
vocabulary, summed and divided by the same token count as the LM loss, times ``training.distill_weight``;
the LM loss on those samples' labels stays. Marked samples must be text only: the teacher reads token
ids, and media embeddings come from projectors the same run may be training.
"""

from __future__ import annotations

import torch
from torch import nn

from omniphi.model.modeling import target_positions

DISTILL_KEY = "distill"  # a sample's flag, and the batch's per-row bool tensor


class DistillMediaError(ValueError):
    """A sample of a distill source holds an image or audio."""


class DistillMarked:
    """A source whose samples carry ``"distill": True``. Skip markers pass through unchanged."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return {**item, DISTILL_KEY: True} if isinstance(item, dict) else item


def distillation_kl(model: nn.Module, batch: dict, rows: torch.Tensor,
                    student_logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(KL(base ‖ trained) summed over the trained positions of the batch's `rows` (a bool per row), the
    number of those positions). `student_logits` are the trained model's logits at
    `target_positions(batch["labels"])`, as the model's loss computed them; `model` is the unwrapped
    model, whose ``language_model`` is a PEFT model."""
    labels = batch["labels"]
    keep = target_positions(labels)
    rows = rows.nonzero().squeeze(1)
    llm = model.language_model
    with torch.no_grad(), llm.disable_adapter():
        teacher = llm(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                      logits_to_keep=keep).logits
    trained = labels[rows, 1:][:, keep] != -100
    student = torch.log_softmax(student_logits[rows][trained].float(), dim=-1)
    teacher = torch.log_softmax(teacher[trained].float(), dim=-1)
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="sum"), int(trained.sum())
