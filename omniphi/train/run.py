"""One training run from a recipe: base model → freezing → (QLoRA quantisation) → LoRA → Trainer → output.

Works the same single-process and under `torchrun` / `accelerate launch` (the Trainer reads the
launcher's environment); only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omniphi.train.recipe import Recipe, RecipeError


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    max_steps: int
    complete: bool  # False when stopped early (stop_after_steps): resume to finish
    checkpoint: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=dict)
    trainer: Any = None  # the OmniTrainer (tests inspect its model)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def wants_bf16(recipe: Recipe) -> bool:
    setting = recipe.training.bf16
    if isinstance(setting, bool):
        return setting
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def gradient_accumulation(recipe: Recipe, processes: int) -> int:
    t = recipe.training
    if t.global_batch_size is None:
        return t.grad_accum or 1
    per_step = t.batch_size * processes
    if t.global_batch_size % per_step:
        raise RecipeError(
            f"training.global_batch_size {t.global_batch_size} is not a multiple of batch_size × processes "
            f"= {t.batch_size} × {processes}"
        )
    return t.global_batch_size // per_step


def resolve_resume(output_dir: Path, resume: bool | str | None) -> str | None:
    from omniphi.train.trainer import CHECKPOINT_COMPLETE, last_checkpoint

    if resume:
        if isinstance(resume, str) and resume not in ("last", "true", "True"):
            if not (Path(resume) / CHECKPOINT_COMPLETE).is_file():
                raise RecipeError(f"--resume {resume}: not a complete checkpoint directory")
            return resume
        found = last_checkpoint(output_dir)
        if found is None:
            raise RecipeError(f"--resume: no complete checkpoint in {output_dir}")
        return found
    if last_checkpoint(output_dir) is not None:
        raise RecipeError(
            f"{output_dir} already has checkpoints: pass --resume to continue that run, or choose another output_dir"
        )
    return None


def training_arguments(recipe: Recipe, has_eval: bool, bf16: bool, grad_accum: int, find_unused: bool):
    from transformers import TrainingArguments

    t = recipe.training
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=bf16,
        use_cpu=not cuda,
        activation_checkpointing=t.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs and with DDP's unused-parameter search.
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        seed=t.seed,
        data_seed=t.data_seed if t.data_seed is not None else t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(t.eval_steps or t.save_steps) if has_eval else None,
        prediction_loss_only=True,  # no logits kept during evaluation: memory stays flat
        remove_unused_columns=False,  # our collator builds exactly the model's inputs
        label_names=["labels"],
        dataloader_num_workers=recipe.data.num_workers,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=find_unused,
        deepspeed=t.deepspeed,
        report_to="none",
        disable_tqdm=False,
    )


def _scratch_language_model(model, overrides: dict, dtype: torch.dtype):
    """A random LLM with the base's architecture and vocabulary, optionally resized by `overrides`."""
    from transformers import AutoModelForCausalLM

    config = model.config.text_config.__class__.from_dict({**model.config.text_config.to_dict(), **overrides})
    if config.vocab_size < model.language_model.get_input_embeddings().weight.shape[0]:
        raise RecipeError("model.text_config.vocab_size may not shrink the tokenizer's vocabulary")
    model.language_model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.config.text_config = config


def run_training(recipe: Recipe, resume: bool | str | None = None) -> TrainResult:
    if recipe.stage == "audio_words":  # its own loop: no LLM pass, Whisper's frames computed once
        from omniphi.train.audio_words import run_audio_words

        return run_audio_words(recipe, resume)
    from transformers import set_seed

    from omniphi.runtime.loading import load_weights
    from omniphi.train import freezing, lora as lora_lib
    from omniphi.train.collator import training_pipeline
    from omniphi.train.data import build_splits
    from omniphi.train.outputs import base_fingerprint, base_record
    from omniphi.train.plots import plot_log
    from omniphi.train.trainer import (
        LOG_FILE, JsonlLogCallback, OmniTrainer, StopAfterStepsCallback, use_own_progress_bar,
    )

    t, m = recipe.training, recipe.model
    output_dir = Path(t.output_dir)
    checkpoint = resolve_resume(output_dir, resume)
    processes = world_size()
    bf16 = wants_bf16(recipe)
    grad_accum = gradient_accumulation(recipe, processes)
    dtype = {"auto": torch.bfloat16 if bf16 else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]

    set_seed(t.seed)  # before anything random is created: LoRA's A matrices, a scratch LLM
    loaded = load_weights(m.base, dtype=dtype)  # on the CPU: the Trainer places it
    model, processor = loaded.model, loaded.processor
    fingerprint = base_fingerprint(model)
    if m.init == "scratch":
        _scratch_language_model(model, m.text_config, dtype)

    modules = freezing.resolve_train_modules(recipe.stage, recipe.train_modules, recipe.lora is not None, model)
    freezing.apply_freezing(model, modules)

    # A module that a batch may not use (the audio projector in an image-only batch) gets no
    # gradient on that step; DDP must then look for unused parameters or it waits forever.
    find_unused = t.ddp_find_unused_parameters
    if find_unused is None:
        find_unused = processes > 1 and any(n != "language_model" for n in modules)
    train_source, eval_source = build_splits(recipe.data, t.data_seed if t.data_seed is not None else t.seed)
    args = training_arguments(recipe, eval_source is not None, bf16, grad_accum, find_unused)

    if m.quantize == "nf4":
        lora_lib.quantize_nf4(model.language_model, args.device, compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    if recipe.lora is not None:
        lora_lib.apply_lora(model, recipe.lora)
    freezing.upcast_trainables(model)
    model.language_model.config.use_cache = False  # no KV cache while training (and none with checkpointing)

    train_dataset, collate = training_pipeline(train_source, processor, recipe.data.max_length)
    eval_dataset = training_pipeline(eval_source, processor, recipe.data.max_length)[0] if eval_source is not None else None

    output_meta = {
        **base_record(m.base, output_dir),
        "base_fingerprint": fingerprint,
        "stage": recipe.stage,
        "init": m.init,
        "quantization": m.quantize,
        "quantized_dtype": str(dtype).removeprefix("torch.") if m.quantize else None,
        "lora": dataclasses.asdict(recipe.lora) if recipe.lora is not None else None,
        "train_modules": modules,
        "recipe_name": recipe.name,
    }
    if m.init == "scratch":
        output_meta["text_config"] = model.config.text_config.to_dict()
    # base_relative is relative to the output dir; checkpoints sit one level deeper.
    checkpoint_meta = {**output_meta, **(base_record(m.base, output_dir / "checkpoint-0") if "base_relative" in output_meta else {})}

    lr = t.learning_rate
    trainer = OmniTrainer(
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        group_lrs={"llm": lr, "projector": lr if t.projector_lr is None else t.projector_lr,
                   "tower": lr if t.tower_lr is None else t.tower_lr},
        output_meta=checkpoint_meta,
        group_by_length=recipe.data.group_by_length,
        length_seed=args.data_seed,
        image_tokens=model.config.image_seq_length,
        distill_weight=t.distill_weight,
    )
    trainer.add_callback(JsonlLogCallback(output_dir / LOG_FILE, trainer))
    if t.stop_after_steps:
        trainer.add_callback(StopAfterStepsCallback(t.stop_after_steps))
    use_own_progress_bar(trainer, t.batch_size * processes * grad_accum)

    if args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(recipe.dump())
        counts = freezing.trainable_summary(model)
        print(f"[{recipe.stage}] training {', '.join(f'{k} {v:,}' for k, v in counts.items())} parameters; "
              f"{len(train_dataset)} training samples, {len(eval_dataset) if eval_dataset is not None else 0} validation; "
              f"global batch {t.batch_size} × {processes} × {grad_accum}" + (f"; resuming {checkpoint}" if checkpoint else ""),
              file=sys.stderr)

    trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    complete = state.global_step >= state.max_steps
    metrics: dict[str, Any] = {}
    skipped = trainer.skip_summary()  # a collective: every rank calls it
    if complete:
        if eval_dataset is not None and not any(
            r.get("step") == state.global_step and "eval_loss" in r for r in state.log_history
        ):
            metrics.update(trainer.evaluate())
        trainer.output_meta = {**output_meta, "skipped_samples": skipped, "eval": metrics}
        trainer.save_model(str(output_dir))  # only rank 0 writes
    if args.process_index == 0:
        losses = [r["loss"] for r in state.log_history if "loss" in r]
        if losses:
            metrics["final_train_loss"] = losses[-1]
        if complete and t.plots:
            plot_log(output_dir / LOG_FILE, output_dir / "plots")
        if skipped["total"]:
            print(f"skipped {skipped['total']} training samples: {skipped['by_reason']}", file=sys.stderr)
    return TrainResult(output_dir, state.global_step, state.max_steps, complete,
                       checkpoint, metrics, skipped, trainer)
