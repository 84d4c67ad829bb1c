"""transformers' Trainer, adapted to omniphi: optimizer groups with their own learning rates, checkpoints
that hold only what trains (and restore it on resume), counted sample skips, a JSONL log and a
progress bar with loss, ETA and samples/s.

What stays stock Trainer: gradient accumulation (with the loss normalised over the tokens of the whole
accumulated batch), bf16 autocast, gradient checkpointing, warmup + cosine, evaluation, checkpoint
rotation, RNG/optimizer/scheduler state on resume, DDP / FSDP / DeepSpeed through accelerate.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from omniphi.data.skipping import SkipCounter
from omniphi.model.modeling import loss_divisor
from omniphi.train.collator import LengthGroupedSampler, estimate_lengths, pop_distill_rows, pop_skipped
from omniphi.train.distill import distillation_kl
from omniphi.train.freezing import group_of
from omniphi.train.outputs import load_trainables_into, save_trained

LOG_FILE = "log.jsonl"
CHECKPOINT_COMPLETE = "trainer_state.json"  # written last by Trainer._save_checkpoint


class OmniTrainer(Trainer):
    def __init__(self, *args, group_lrs: dict[str, float], output_meta: dict[str, Any],
                 group_by_length: bool = False, length_seed: int = 0, image_tokens: int = 0,
                 distill_weight: float = 1.0, **kwargs):
        self.group_lrs = group_lrs  # {"llm": lr, "projector": lr, "tower": lr}
        self.output_meta = output_meta  # what omniphi_trained.json records about the run
        self.group_by_length = group_by_length
        self.length_seed = length_seed
        self.image_tokens = image_tokens
        self.distill_weight = distill_weight  # the KL term on distill sources' samples (omniphi/train/distill.py)
        self.distill_kl = [0.0, 0]  # summed KL and positions since the last log line (the log's distill_kl)
        self.train_skips = SkipCounter()
        self.eval_skips = SkipCounter(log=False)  # the same bad samples come back at every evaluation
        super().__init__(*args, **kwargs)

    # -- optimizer: one group per (module group, weight decay) ---------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((group_of(name), name in decay), []).append(param)
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen")
        param_groups = [
            {
                "params": params,
                "lr": self.group_lrs[group],
                "weight_decay": self.args.weight_decay if with_decay else 0.0,
                "name": f"{group}{'' if with_decay else '_no_decay'}",
            }
            # A fixed order: the optimizer state in a checkpoint is matched to groups by position.
            for (group, with_decay), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)  # each group carries its own
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # -- data ------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = estimate_lengths(dataset, self.image_tokens)
        return LengthGroupedSampler(
            lengths, self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps, self.length_seed
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Skip records from the collator travel in the batch (DataLoader workers cannot share a
        # counter); count them here, in the main process, and keep them out of model(**inputs).
        skipped = pop_skipped(inputs)
        (self.train_skips if model.training else self.eval_skips).update(skipped)
        distill_rows = pop_distill_rows(inputs)
        if distill_rows is None or not model.training or self.distill_weight == 0:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        kl, positions = distillation_kl(self.accelerator.unwrap_model(model), inputs, distill_rows.to(loss.device),
                                        outputs.logits)
        self.distill_kl[0] += float(kl.detach())
        self.distill_kl[1] += positions
        # per trained token, as the LM loss is: divided by the same count
        loss = loss + self.distill_weight * kl / loss_divisor(inputs["labels"], num_items_in_batch).to(kl.device, kl.dtype)
        return (loss, outputs) if return_outputs else loss

    def pop_distill_kl(self) -> float | None:
        """The mean KL per distilled position since the last call (None when none was distilled)."""
        total, positions = self.distill_kl
        self.distill_kl = [0.0, 0]
        return total / positions if positions else None

    # -- checkpoints: adapter + non-LoRA trainables only -------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        step = self.state.global_step
        save_trained(model, output_dir, {**self.output_meta, "global_step": step}, state_dict=state_dict)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_trainables_into(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best and os.path.isdir(best):
            load_trainables_into(self.accelerator.unwrap_model(self.model), best)

    def skip_summary(self) -> dict[str, Any]:
        """Skip counts of all processes (each rank counts the samples it drew)."""
        counts = Counter(self.train_skips.counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, dict(self.train_skips.counts))
            counts = Counter()
            for part in gathered:
                counts.update(part)
        return {"total": sum(counts.values()), "by_reason": dict(counts), "eval_by_reason": dict(self.eval_skips.counts)}


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N whose save completed (a run killed while saving leaves one without
    trainer_state.json, which Trainer's own get_last_checkpoint would pick and then fail on)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    done = []
    for child in output_dir.iterdir():
        name = child.name
        if name.startswith("checkpoint-") and name[11:].isdigit() and (child / CHECKPOINT_COMPLETE).is_file():
            done.append((int(name[11:]), child))
    return str(max(done)[1]) if done else None


# -- callbacks ---------------------------------------------------------------------------------------------------
def _group_lrs(optimizer) -> dict[str, float]:
    """{"lr_llm": ..., "lr_projector": ...}: the rates of the step being taken."""
    out = {}
    for group in optimizer.param_groups:
        name = str(group.get("name", "group")).removesuffix("_no_decay")
        out.setdefault(f"lr_{name}", float(group["lr"]))
    return out


class JsonlLogCallback(TrainerCallback):
    """One JSON object per Trainer log event (train loss, eval loss, learning rates per group, skips).

    On resume, entries past the checkpoint's step (written by the interrupted run after its last
    checkpoint) are dropped, so the log reads as one continuous run."""

    def __init__(self, path: str | Path, trainer: OmniTrainer):
        self.path = Path(path)
        self.trainer = trainer
        self.started = time.time()
        self.step_lrs: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if args.process_index != 0:  # (not state.is_world_process_zero: a resumed state is rank 0's copy)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by the kill
                if record.get("step", 0) <= state.global_step and state.global_step > 0:
                    kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Before the scheduler moves on: the rates this step used (what Trainer's learning_rate shows).
        if optimizer is not None:
            self.step_lrs = _group_lrs(optimizer)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if args.process_index != 0 or not logs:
            return
        kind = "eval" if any(k.startswith("eval_") for k in logs) else ("summary" if "train_runtime" in logs else "train")
        record = {"type": kind, "step": state.global_step}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        record["epoch"] = round(state.epoch or 0.0, 4)
        record["time"] = round(time.time() - self.started, 2)
        if kind == "train":
            record.update(self.step_lrs)
            record["skipped"] = self.trainer.train_skips.total
            distill_kl = self.trainer.pop_distill_kl()
            if distill_kl is not None:
                record["distill_kl"] = round(distill_kl, 5)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class ProgressBarCallback(TrainerCallback):
    """tqdm over optimizer steps: loss, learning rate and samples/s in the postfix, ETA from tqdm."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.bar = None
        self.loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.local_process_index == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True,
                            desc="train")
            self.start_step, self.start_time = state.global_step, time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        elapsed = max(time.time() - self.start_time, 1e-9)
        postfix = {"samples/s": f"{(state.global_step - self.start_step) * self.global_batch_size / elapsed:.2f}"}
        if self.loss is not None:
            postfix["loss"] = f"{self.loss:.4f}"
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            postfix["lr"] = f"{optimizer.param_groups[0]['lr']:.2e}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.loss = logs["loss"]
        if "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopAfterStepsCallback(TrainerCallback):
    """Save a checkpoint and stop at a step, with the schedule still planned for the whole run:
    a time-boxed session (or a test's simulated kill) that a later `--resume` continues exactly."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_save = True
            control.should_training_stop = True


def use_own_progress_bar(trainer: Trainer, global_batch_size: int) -> None:
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressBarCallback(global_batch_size))
