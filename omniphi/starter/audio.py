"""Stage 2 of the starter model: teach its audio projector to write each spoken question as the
question's own words in SmolLM2's word space, before any stage runs the LLM.

Why a stage of its own: after the transcription stage alone (recipes/starter-align.yaml), the
native audio path transcribed the test questions well yet answered only 67 % of them (typed: 87 %).
It said "No." to 87 % of the "Is there a red circle?" questions and, asked where an object is,
mostly named another object's place: the LLM heard *that* a question was asked but could not match
its colour and shape words against the picture. The picture's tokens are word embeddings (stage 1,
omniphi/starter/vision.py), and a typed question's words match them; transcription only asks that
the LLM can copy the audio out, not that the audio tokens look like words where they go in.

Here each audio token (160 ms of Whisper frames through the projector) is classified by cosine
against SmolLM2's input embeddings (the questions' own words and 2,048 others; the validation reads
against the whole table), and a CTC loss over those classes spells the
question's tokens ("What", " colour", " is", " the", " circle", "?") in order, the CTC blank being
the embedding of a lone space. A second term pulls every token onto the nearest of its question's
words or the blank (the token *is* that word, as the LLM reads it), a third keeps its length that of
a word embedding. The spoken question then reaches the LLM as roughly "What colour colour is the
circle ?" padded with spaces: what the typed path already answers. Whisper stays frozen, so its
frames are computed once, and no LLM pass is needed: 2,048 clips × 3 epochs take 3 min, where the
transcription stage takes 5 min for 640 clips seen once.

With this stage the native path answers 90.7 % of the test questions (typed: 91.0 %; the README
has the numbers). The output is a training output (the projector's weights) on the stage-1
output, so the transcription stage's recipe names it as its `model.base`.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from omniphi.eval.metrics import word_errors
from omniphi.model.audio_encoder import encode_windows, stack_frames
from omniphi.processing import pad_audio_windows
from omniphi.starter.word_space import WordSpace

BLANK_TEXT = " "  # the CTC blank's word: what the LLM sees between the spoken words


@dataclass
class AudioPretrainSettings:
    # From the training split's ASR manifest, in its order. 1,024 clips × 4 epochs already spelled
    # 99 % of 128 validation questions exactly; more clips bring more voices and rates.
    clips: int = 2048
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    cosine_weight: float = 1.0
    norm_weight: float = 0.1
    validation_clips: int = 300
    # The CTC classes: the questions' own tokens, the blank, and this many other words of the
    # vocabulary (drawn once) that the tokens must stay apart from. All 49,152 cost ~20× more per step;
    # the validation reads the tokens against the whole table.
    negatives: int = 2048
    seed: int = 0


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


def read_manifest(path: Path, limit: int | None = None) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return records[:limit] if limit else records


@torch.no_grad()
def whisper_frames(model, processor, root: Path, records: list[dict], batch_size: int = 32) -> list[torch.Tensor]:
    """The frozen Whisper encoder's frames of each clip, stacked as the projector takes them."""
    from omniphi.media import load_audio

    out = []
    for start in range(0, len(records), batch_size):
        windows = []
        for record in records[start:start + batch_size]:
            clip = processor.audio_windows(load_audio(str(root / record["audio"])))
            if len(clip) != 1:
                raise ValueError(f"{record['audio']}: a spoken question longer than one 30 s window")
            windows.append(clip[0])
        for frames in encode_windows(model.audio_tower, *pad_audio_windows(windows)):
            out.append(stack_frames(frames, model.config.audio_stack_factor))
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
    stacked, lengths = _padded(frames)
    tokens = projector(stacked)  # [B, T, D]
    cos = table.cosines(tokens, classes)  # [B, T, C]
    log_probs = (table.scale() * cos).log_softmax(-1)
    flat = torch.tensor([t for target in targets for t in target])
    target_lengths = torch.tensor([len(t) for t in targets])
    ctc = nn.functional.ctc_loss(log_probs.transpose(0, 1), flat, lengths, target_lengths, blank=blank,
                                 reduction="mean", zero_infinity=True)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    pulls = []
    for i, target in enumerate(targets):  # each real token onto the nearest of its own words or the blank
        own = torch.tensor(sorted({*target, blank}))
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
def spelling_accuracy(projector, table: WordTable, frames, targets, blank: int, batch_size: int = 64) -> dict[str, float]:
    """Validation: "exact" the share of clips whose audio tokens, read as their nearest words,
    spell the question exactly; "tokens" 1 − token edit distance / question tokens; "cosine" the
    mean cosine of each token to the nearest of its own words or the blank."""
    exact, errors, total, cosine_sum, n_tokens = 0, 0, 0, 0.0, 0
    for start in range(0, len(frames), batch_size):
        chunk, wanted = frames[start:start + batch_size], targets[start:start + batch_size]
        stacked, lengths = _padded(chunk)
        cos = table.cosines(projector(stacked))
        for i, target in enumerate(wanted):
            said = greedy_decode(cos[i], int(lengths[i]), blank)
            exact += said == target
            errors += word_errors(target, said)
            total += len(target)
            own = torch.tensor(sorted({*target, blank}))
            cosine_sum += float(cos[i, : int(lengths[i])][:, own].max(-1).values.sum())
            n_tokens += int(lengths[i])
    return {"exact": exact / len(frames), "tokens": 1 - errors / total, "cosine": cosine_sum / n_tokens}


def pretrain_audio(shapes_dir: str | Path, output_dir: str | Path, base: str,
                   settings: AudioPretrainSettings | None = None) -> dict[str, float]:
    """Train `base`'s audio projector on the spoken training questions of `shapes_dir` and write a
    training output to `output_dir`. Returns the validation spelling accuracies."""
    from transformers import get_cosine_schedule_with_warmup

    from omniphi.runtime.loading import load_weights
    from omniphi.train.outputs import base_fingerprint, base_record, save_trained

    settings = settings or AudioPretrainSettings()
    shapes_dir, output_dir = Path(shapes_dir), Path(output_dir)
    torch.manual_seed(settings.seed)
    loaded = load_weights(str(base))
    model, processor = loaded.model, loaded.processor
    fingerprint = base_fingerprint(model)
    tokenizer = processor.tokenizer
    blank_ids = tokenizer(BLANK_TEXT, add_special_tokens=False)["input_ids"]
    if len(blank_ids) != 1:
        raise ValueError(f"the CTC blank {BLANK_TEXT!r} is {len(blank_ids)} tokens for this tokenizer; it must be one")
    blank = blank_ids[0]

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    projector = model.audio_projector
    projector.requires_grad_(True).train()
    table = WordTable(model.language_model)

    started = time.monotonic()
    train = read_manifest(shapes_dir / "train_asr.jsonl", settings.clips)
    val = read_manifest(shapes_dir / "val_asr.jsonl", settings.validation_clips)
    train_frames = whisper_frames(model, processor, shapes_dir, train)
    val_frames = whisper_frames(model, processor, shapes_dir, val)

    def spell(records):
        return [tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in records]

    train_targets, val_targets = spell(train), spell(val)
    own_words = sorted({t for target in train_targets for t in target} | {blank})
    drawn = torch.randperm(len(table.unit), generator=torch.Generator().manual_seed(settings.seed))
    own = set(own_words)
    others = [t for t in drawn.tolist() if t not in own][: settings.negatives]
    classes = torch.tensor(own_words + others)
    class_of = {t: i for i, t in enumerate(classes.tolist())}
    train_classes = [[class_of[t] for t in target] for target in train_targets]
    print(f"[audio] {len(train)} training clips, {len(val)} validation; Whisper frames in "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)

    params = list(projector.parameters()) + list(table.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(total * settings.warmup_ratio), total)
    order = random.Random(settings.seed)
    accuracy = spelling_accuracy(projector, table, val_frames, val_targets, blank)
    print("[audio] before: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()), file=sys.stderr)
    for epoch in range(settings.epochs):
        indices = list(range(len(train)))
        order.shuffle(indices)
        running = 0.0
        for start in range(0, len(indices), settings.batch_size):
            batch = indices[start:start + settings.batch_size]
            ctc, cosine, norm = ctc_losses(projector, table, [train_frames[i] for i in batch],
                                           [train_classes[i] for i in batch], class_of[blank], classes)
            loss = ctc + settings.cosine_weight * cosine + settings.norm_weight * norm
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(batch)
        projector.eval()
        accuracy = spelling_accuracy(projector, table, val_frames, val_targets, blank)
        projector.train()
        print(f"[audio] epoch {epoch + 1}/{settings.epochs}: train loss {running / len(indices):.4f}, val "
              + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
              + f" ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    projector.eval()
    meta = {
        **base_record(str(base), output_dir),
        "base_fingerprint": fingerprint,
        "stage": "audio",
        "init": "pretrained",
        "quantization": None,
        "lora": None,
        "train_modules": ["audio_projector"],
        "recipe_name": "starter-audio",
        "settings": asdict(settings),
        "eval": {f"val_spelling_{k}": v for k, v in accuracy.items()},
    }
    save_trained(model, output_dir, meta)
    return accuracy
