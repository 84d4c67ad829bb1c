"""The `audio_words` stage: the audio projector learns to write each spoken sample as its
transcript's own words in the LLM's word space, without running the LLM.

Why a stage of its own: after transcription training alone (an `align` recipe on ASR data), the
starter's native audio path transcribed its test questions well yet answered only 67 % of them
(typed: 87 %). It said "No." to 87 % of the "Is there a red circle?" questions: the LLM heard
*that* a question was asked but could not match its colour and shape words against the picture,
whose tokens are word embeddings. Transcription only asks that the LLM can copy the audio out, not
that the audio tokens look like words where they go in.

Here each audio token (the projector's output: 8 Whisper frames, 160 ms) is classified by cosine
against the LLM's input embeddings (the transcripts' own tokens, the blank and `negatives` others
drawn once; validation reads against the whole table), and a CTC loss spells the transcript's
tokens in order ("What", " colour", " is", " the", " circle", "?"), the CTC blank being the
embedding of a lone space. A second term pulls every token onto the nearest of its own words or
the blank, a third keeps its length that of a word embedding. The LLM then reads a spoken question
as roughly "What colour colour is the circle ?" padded with spaces: what the typed path answers.
Whisper and the LLM stay frozen and no LLM pass is needed, so Whisper's frames can be computed once
(`audio_words.cache_frames`): 2,048 clips × 3 epochs take 3 min on 2 CPU cores.

Data: ASR sources (asr_manifest, librispeech): the user turn's audio clip and the assistant's
transcript. Runs in one process (no DDP); on a GPU when there is one. The output is a training
output like any stage's (the projector's weights), so the next recipe names it as `model.base`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omniphi.eval.metrics import word_errors
from omniphi.model.audio_encoder import encode_windows, stack_frames
from omniphi.processing import pad_audio_windows
from omniphi.train.recipe import Recipe, RecipeError
from omniphi.train.word_space import WordSpace


class WordTable(WordSpace):
    """Cosines of audio tokens to the LLM's whole input-embedding table, or to some of its rows."""

    def __init__(self, language_model):
        super().__init__(language_model)
        table = language_model.get_input_embeddings().weight.detach().float()
        self.register_buffer("unit", nn.functional.normalize(table, dim=-1))

    def cosines(self, tokens: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """[..., D] → [..., V] cosines to every word, or [..., len(classes)] to those token ids."""
        unit = self.unit if classes is None else self.unit[classes]
        return nn.functional.normalize(tokens.float(), dim=-1) @ unit.T


def _clip_and_text(sample) -> tuple[Any, str]:
    user, answer = sample["messages"][0], sample["messages"][-1]
    audio = [p["audio"] for p in user["content"] if p["type"] == "audio"]
    text = "".join(p["text"] for p in answer["content"] if p["type"] == "text").strip()
    if len(audio) != 1 or not text:
        raise RecipeError(f"sample {sample['id']}: the audio_words stage needs one audio clip and its transcript")
    return audio[0], text


def spoken_pairs(dataset, keep_audio: bool = True) -> tuple[list[int], list[Any], list[str], int]:
    """(sample indices, audio clips (None each unless keep_audio), transcripts, skipped) of an ASR
    dataset: the user turn's one clip and the assistant's text. A sample the loader skipped (bad
    audio) is counted, not used."""
    indices, clips, texts, skipped = [], [], [], 0
    for index in range(len(dataset)):
        sample = dataset[index]
        if not sample:
            skipped += 1
            continue
        clip, text = _clip_and_text(sample)
        indices.append(index)
        clips.append(clip if keep_audio else None)
        texts.append(text)
    return indices, clips, texts, skipped


@torch.no_grad()
def whisper_frames(model, processor, clips: list, device: torch.device, batch_size: int = 32) -> list[torch.Tensor]:
    """The frozen Whisper encoder's frames of each clip, stacked as the projector takes them (on the CPU)."""
    out = []
    for start in range(0, len(clips), batch_size):
        windows = []
        for clip in clips[start:start + batch_size]:
            clip_windows = processor.audio_windows(clip)
            if len(clip_windows) != 1:
                raise RecipeError("the audio_words stage takes clips of at most one 30 s window")
            windows.append(clip_windows[0])
        features, lengths = pad_audio_windows(windows)
        for frames in encode_windows(model.audio_tower, features.to(device), lengths.to(device)):
            out.append(stack_frames(frames, model.config.audio_stack_factor).cpu())
    return out


def _padded(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(x) for x in items])
    batch = items[0].new_zeros(len(items), int(lengths.max()), items[0].shape[-1])
    for i, x in enumerate(items):
        batch[i, : len(x)] = x
    return batch, lengths


def ctc_losses(projector, table: WordTable, frames: list[torch.Tensor], targets: list[list[int]],
               blank: int, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CTC loss, cosine-to-own-words loss, norm penalty) for a batch; `targets` and `blank` are
    indices into `classes` (token ids)."""
    device = table.unit.device
    stacked, lengths = _padded(frames)
    tokens = projector(stacked.to(device))  # [B, T, D]
    cos = table.cosines(tokens, classes)  # [B, T, C]
    log_probs = (table.scale() * cos).log_softmax(-1)
    flat = torch.tensor([t for target in targets for t in target])
    target_lengths = torch.tensor([len(t) for t in targets])
    ctc = nn.functional.ctc_loss(log_probs.transpose(0, 1), flat.to(device), lengths.to(device),
                                 target_lengths.to(device), blank=blank, reduction="mean", zero_infinity=True)
    real = torch.arange(tokens.shape[1], device=device)[None, :] < lengths.to(device)[:, None]
    pulls = []
    for i, target in enumerate(targets):  # each real token onto the nearest of its own words or the blank
        own = torch.tensor(sorted({*target, blank}), device=device)
        pulls.append(1 - cos[i, : int(lengths[i])][:, own].max(-1).values)
    cosine = torch.cat(pulls).mean()
    norm = table.norm_penalty(tokens[real])
    return ctc, cosine, norm


def greedy_decode(cos: torch.Tensor, length: int, blank: int) -> list[int]:
    """CTC best path: each token's nearest word, repeats merged, blanks dropped."""
    best = cos[:length].argmax(-1).tolist()
    out, previous = [], None
    for token in best:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


@torch.no_grad()
def read_clips(projector, table: WordTable, frames, blank: int, batch_size: int = 64):
    """For each clip's frames, in order: (its real tokens' cosines to the whole table [T, V] on the
    CPU, the token ids they spell: each token read as its nearest word, the CTC best path)."""
    device = table.unit.device
    for start in range(0, len(frames), batch_size):
        stacked, lengths = _padded(frames[start:start + batch_size])
        cos = table.cosines(projector(stacked.to(device))).cpu()
        for i, length in enumerate(lengths.tolist()):
            yield cos[i, :length], greedy_decode(cos[i], length, blank)


def spelling_accuracy(projector, table: WordTable, frames, targets, blank: int, batch_size: int = 64) -> dict[str, float]:
    """Validation: "exact" the share of clips whose audio tokens, read as their nearest words,
    spell the transcript exactly; "tokens" 1 − token edit distance / transcript tokens; "cosine"
    the mean cosine of each token to the nearest of its own words or the blank."""
    exact, errors, total, cosine_sum, n_tokens = 0, 0, 0, 0.0, 0
    for target, (cos, said) in zip(targets, read_clips(projector, table, frames, blank, batch_size)):
        exact += said == target
        errors += word_errors(target, said)
        total += len(target)
        own = torch.tensor(sorted({*target, blank}))
        cosine_sum += float(cos[:, own].max(-1).values.sum())
        n_tokens += len(cos)
    return {"exact": exact / len(frames), "tokens": 1 - errors / total, "cosine": cosine_sum / n_tokens}


def run_audio_words(recipe: Recipe, resume=None):
    """Train the base's audio projector (see the module docstring); write a training output."""
    from transformers import get_cosine_schedule_with_warmup

    from omniphi.runtime.loading import load_weights
    from omniphi.train.data import build_splits
    from omniphi.train.outputs import base_fingerprint, base_record, save_trained
    from omniphi.train.run import TrainResult, world_size
    from omniphi.train.trainer import LOG_FILE

    if resume:
        raise RecipeError("the audio_words stage takes minutes and keeps no checkpoints: run it again instead of --resume")
    if world_size() > 1:
        raise RecipeError("the audio_words stage runs in one process: start it with python -m omniphi.train, not torchrun")
    t, settings = recipe.training, recipe.audio_words
    output_dir = Path(t.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)
    loaded = load_weights(recipe.model.base)
    model, processor = loaded.model, loaded.processor
    if getattr(model, "audio_projector", None) is None:
        raise RecipeError(f"{recipe.model.base} has no audio projector to train")
    fingerprint = base_fingerprint(model)
    tokenizer = processor.tokenizer
    blank_ids = tokenizer(settings.blank, add_special_tokens=False)["input_ids"]
    if len(blank_ids) != 1:
        raise RecipeError(f"audio_words.blank {settings.blank!r} is {len(blank_ids)} tokens for this tokenizer; it must be one")
    blank = blank_ids[0]

    model.requires_grad_(False)
    model.to(device)
    projector = model.audio_projector
    projector.requires_grad_(True).train()
    table = WordTable(model.language_model).to(device)

    started = time.monotonic()
    train_source, eval_source = build_splits(recipe.data, t.data_seed if t.data_seed is not None else t.seed)
    # Without the frame cache the clips are decoded again at each step (a corpus too large for memory).
    train_indices, train_clips, train_texts, skipped = spoken_pairs(train_source, keep_audio=settings.cache_frames)
    _, val_clips, val_texts, _ = spoken_pairs(eval_source) if eval_source is not None else ([], [], [], 0)
    if not train_indices:
        raise RecipeError("the audio_words stage found no usable training clips")

    def spell(texts):
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    train_targets, val_targets = spell(train_texts), spell(val_texts)
    own_words = sorted({token for target in train_targets for token in target} | {blank})
    drawn = torch.randperm(len(table.unit), generator=torch.Generator().manual_seed(t.seed)).tolist()
    own = set(own_words)
    classes = torch.tensor(own_words + [token for token in drawn if token not in own][: settings.negatives], device=device)
    class_of = {token: i for i, token in enumerate(classes.tolist())}
    train_classes = [[class_of[token] for token in target] for target in train_targets]

    def frames_of(clips):
        return whisper_frames(model, processor, clips, device)

    def batch_frames(batch: list[int]) -> list[torch.Tensor]:
        if train_frames is not None:
            return [train_frames[i] for i in batch]
        return frames_of([_clip_and_text(train_source[train_indices[i]])[0] for i in batch])

    # Cached: Whisper runs once per clip. Not cached: once per step.
    train_frames = frames_of(train_clips) if settings.cache_frames else None
    val_frames = frames_of(val_clips) if val_clips else []
    print(f"[audio_words] {len(train_indices)} training clips, {len(val_clips)} validation"
          + (f"; Whisper frames in {time.monotonic() - started:.0f} s" if settings.cache_frames else ""), file=sys.stderr)

    params = list(projector.parameters()) + list(table.parameters())
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(len(train_indices) / t.batch_size)
    total = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(total * t.warmup_ratio), total)
    order = random.Random(t.data_seed if t.data_seed is not None else t.seed)
    log = []

    def validate() -> dict[str, float]:
        if not val_frames:
            return {}
        projector.eval()
        accuracy = spelling_accuracy(projector, table, val_frames, val_targets, blank)
        projector.train()
        return accuracy

    accuracy = validate()
    if accuracy:
        print("[audio_words] before: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()), file=sys.stderr)
    step = 0
    while step < total:
        indices = list(range(len(train_indices)))
        order.shuffle(indices)
        running, seen = 0.0, 0
        for start in range(0, len(indices), t.batch_size):
            if step >= total:
                break
            batch = indices[start:start + t.batch_size]
            frames = batch_frames(batch)
            ctc, cosine, norm = ctc_losses(projector, table, frames, [train_classes[i] for i in batch],
                                           class_of[blank], classes)
            loss = ctc + settings.cosine_weight * cosine + settings.norm_weight * norm
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            running += loss.item() * len(batch)
            seen += len(batch)
            if step % t.logging_steps == 0 or step == 1:
                log.append({"type": "train", "step": step, "loss": loss.item(), "ctc": ctc.item(),
                            "cosine": cosine.item(), "learning_rate": scheduler.get_last_lr()[0]})
        accuracy = validate()
        print(f"[audio_words] step {step}/{total}: train loss {running / max(seen, 1):.4f}"
              + (", val " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) if accuracy else "")
              + f" ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    projector.eval()
    model.to("cpu")
    meta = {
        **base_record(recipe.model.base, output_dir),
        "base_fingerprint": fingerprint,
        "stage": recipe.stage,
        "init": "pretrained",
        "quantization": None,
        "lora": None,
        "train_modules": ["audio_projector"],
        "recipe_name": recipe.name,
        "settings": dataclasses.asdict(settings),
        "skipped_samples": {"total": skipped},
        "eval": {f"val_spelling_{k}": v for k, v in accuracy.items()},
    }
    save_trained(model, output_dir, meta)
    (output_dir / "recipe.yaml").write_text(recipe.dump())
    (output_dir / LOG_FILE).write_text("".join(json.dumps(record) + "\n" for record in log))
    metrics = {**meta["eval"], **({"final_train_loss": log[-1]["loss"]} if log else {})}
    return TrainResult(output_dir, step, total, True, None, metrics, {"total": skipped})
