"""Run a task against an assistant: batched greedy generation, per-item scores, aggregates,
results JSON and a Markdown table.

Conditions: every item is answered under one or more *conditions*, side by side:

* question tasks: how the question is asked (``--ask-by``): ``text``; ``native`` (the question
  as speech, audio embeddings into the LLM); ``transcribe`` (the question as speech, Whisper's
  transcript into the LLM). Speech comes from the dataset (shapes' spoken split) or is
  synthesised with :class:`omniphi.data.tts.Speaker`. For speech conditions Whisper's
  transcript of the question is scored against the question text (``question_wer``).
* ASR: ``whisper`` (``assistant.transcribe``) and ``native`` (the audio plus "Transcribe the
  audio." answered by the LLM).
* perplexity: ``text``.

Batching: a batch's conversations are answered together by ``Assistant.complete_batch`` (batched
greedy decoding equals one-at-a-time decoding; the shared prompt prefix is computed once).
Anything without ``complete_batch`` — a scripted test double, a remote client — is asked one
conversation at a time through ``complete``. Perplexity comes from ``Assistant.token_logprobs``.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from omniphi.eval import metrics as M
from omniphi.eval.tasks import EvalError, Item, LoadOptions, Task, check_data_path, get_task

ASK_BY = ("text", "native", "transcribe")
SPEECH_CONDITIONS = ("native", "transcribe")
RESULTS_VERSION = 1


# --------------------------------------------------------------------------- generation


def _can_batch(assistant) -> bool:
    return callable(getattr(assistant, "complete_batch", None))


def generate_answers(assistant, conversations: Sequence[list], max_new_tokens: int) -> list[str | None]:
    """Greedy answers, stripped; None for a prompt longer than the model's context."""
    from omniphi.chat import GenerationSettings

    if not conversations:
        return []
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    if not _can_batch(assistant):
        return [assistant.complete(c, settings, audio_mode="native").text.strip() for c in conversations]
    replies = assistant.complete_batch(list(conversations), settings, skip_too_long=True)
    return [None if reply is None else reply.text.strip() for reply in replies]


def has_transcriber(assistant) -> bool:
    # An Assistant says so with `transcriber`; a double that only has `transcribe` is trusted.
    return getattr(assistant, "transcriber", True) is not None and hasattr(assistant, "transcribe")


# --------------------------------------------------------------------------- media


class _Media:
    """Loads a batch's images and audio; a file that cannot be used marks its item skipped."""

    def __init__(self, speaker=None):
        self.speaker = speaker

    def image(self, item: Item):
        from omniphi import media

        return media.load_image(item.image)

    def audio(self, path: Path):
        from omniphi import media

        return media.load_audio(path)

    def spoken_question(self, item: Item) -> np.ndarray:
        if item.audio is not None:
            return self.audio(item.audio)
        if not item.question.strip():
            raise EvalError(f"item {item.id} has no question text to speak")
        if self.speaker is None:
            from omniphi.data.tts import Speaker

            self.speaker = Speaker()
        return self.speaker.speak(item.question, key=item.id)


def _media_error(exc: BaseException) -> str:
    from omniphi import media

    if isinstance(exc, FileNotFoundError):
        return "missing_file"
    if isinstance(exc, media.MediaError):
        return "bad_media"
    return "unreadable"


# --------------------------------------------------------------------------- conditions


def check_options(task: Task, ask_by: Sequence[str] | None, audio_mode: str | None,
                  image_order: str = "mixed", system: str | None = None) -> None:
    """Option combinations that make no sense for the task (checked before a model loads)."""
    if image_order != "mixed" and task.name != "shapes":
        raise EvalError(f"--image-order applies to --task shapes, not {task.name}")
    if system is not None and task.kind != "qa":
        raise EvalError(f"--system applies to question tasks, not {task.name}")
    if system is not None and not system.strip():
        raise EvalError("--system is empty; leave it out to ask with no system prompt")
    if audio_mode not in (None, "native", "transcribe"):
        raise EvalError(f"--audio-mode must be native or transcribe, not {audio_mode}")
    if task.kind == "qa":
        if audio_mode is not None:
            raise EvalError("--audio-mode applies to --task asr; ask questions by speech with --ask-by native|transcribe")
        bad = [c for c in ask_by or () if c not in ASK_BY]
        if bad:
            raise EvalError(f"--ask-by must be among {', '.join(ASK_BY)}, not {', '.join(bad)}")
        return
    if ask_by and list(ask_by) != ["text"]:
        raise EvalError(f"--ask-by applies to question tasks, not {task.name}")
    if task.kind != "asr" and audio_mode is not None:
        raise EvalError(f"--audio-mode does not apply to {task.name}")


def conditions_for(task: Task, assistant, ask_by: Sequence[str] | None, audio_mode: str | None,
                   image_order: str = "mixed", system: str | None = None) -> tuple[list[str], list[str]]:
    """The conditions to run and notes about ones left out."""
    check_options(task, ask_by, audio_mode, image_order, system)
    name = getattr(assistant, "name", type(assistant).__name__)
    if task.kind == "qa":
        chosen = list(dict.fromkeys(ask_by or task.default_ask_by))
        if "transcribe" in chosen and not has_transcriber(assistant):
            raise EvalError(f"--ask-by transcribe needs a speech recogniser; the model {name} has none")
        return chosen, []
    if task.kind == "asr":
        if audio_mode == "transcribe":
            if not has_transcriber(assistant):
                raise EvalError(f"--audio-mode transcribe needs a speech recogniser; the model {name} has none")
            return ["whisper"], []
        if audio_mode == "native":
            return ["native"], []
        if has_transcriber(assistant):
            return ["whisper", "native"], []
        return ["native"], [f"whisper: left out, the model {name} has no speech recogniser"]
    return ["text"], []


def _serves_images_first(assistant) -> bool:
    """Whether the model moves every message's pictures first (omniphi.templates), which makes the
    shapes task's two part orders one prompt."""
    config = getattr(getattr(assistant, "model", None), "config", None)
    return getattr(config, "media_placement", None) == "images_first"


def _question_content(item: Item, image, condition: str, audio, transcript: str | None) -> list[dict]:
    media: list[dict] = [{"type": "image", "image": image}] if image is not None else []
    if condition == "text":
        parts = [{"type": "text", "text": item.prompt}]
    else:
        parts = [{"type": "text", "text": item.before}] if item.before else []
        if condition == "native":
            parts.append({"type": "audio", "audio": audio})
        else:  # the transcript stands where the audio was, as Assistant's transcribe mode does
            parts.append({"type": "text", "text": transcript})
        if item.after:
            parts.append({"type": "text", "text": item.after})
    return parts + media if item.image_last else media + parts


# --------------------------------------------------------------------------- the run


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="item", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def evaluate(
    assistant,
    task: str | Task,
    data: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    ask_by: Sequence[str] | None = None,
    audio_mode: str | None = None,
    max_new_tokens: int | None = None,
    images: str | Path | None = None,
    split: str | None = None,
    window: int | None = None,
    stride: int | None = None,
    image_order: str = "mixed",
    system: str | None = None,
    speaker=None,
    progress: bool = True,
    items: list[Item] | None = None,
) -> dict[str, Any]:
    """Evaluate and return the results (JSON-ready; see docs/eval.md for the shape). ``items``:
    already loaded with ``task.load`` (the CLI loads the data before the model, to fail fast).
    ``system``: a system prompt before every question (question tasks); None asks with none, as
    the CLI and the API do by default."""
    task = get_task(task) if isinstance(task, str) else task
    if batch_size < 1:
        raise EvalError("--batch-size must be at least 1")
    if limit is not None and limit < 1:
        raise EvalError("--limit must be at least 1")
    path = check_data_path(data)
    conditions, notes = conditions_for(task, assistant, ask_by, audio_mode, image_order, system)
    options = LoadOptions(images=Path(images) if images else None, split=split, limit=limit, image_order=image_order)
    started = time.perf_counter()
    if items is None:
        items = task.load(path, options)
    both_orders = len({item.image_last for item in items}) == 2
    if both_orders and _serves_images_first(assistant):
        notes.append("image_order: the model is served pictures first (media_placement images_first), so both "
                     "groups get the same prompt and differ only in their questions (--image-order first and last "
                     "ask every question each way; --media-placement as_given shows the model itself)")
    if task.kind == "perplexity":
        per_item, metrics, skipped = _run_perplexity(assistant, items[0], limit, window, stride, progress)
        breakdown: dict = {"text": {}}
    else:
        max_new = max_new_tokens or task.max_new_tokens
        per_item, skipped = _run_generation(assistant, task, items, conditions, batch_size, max_new, speaker, progress,
                                            system)
        metrics, breakdown = _aggregate(task, items, per_item, conditions, skipped)
    results = {
        "omniphi_eval": RESULTS_VERSION,
        "task": task.name,
        "description": task.description,
        "model": getattr(assistant, "name", type(assistant).__name__),
        "data": str(path.resolve()),
        "conditions": conditions,
        "notes": notes,
        "settings": {
            "limit": limit, "batch_size": batch_size, "ask_by": list(ask_by) if ask_by else None,
            "audio_mode": audio_mode, "max_new_tokens": None if task.kind == "perplexity" else (max_new_tokens or task.max_new_tokens),
            "images": str(images) if images else None, "split": split, "window": window, "stride": stride,
            "image_order": image_order, "system": system,
            "greedy": True, "batched": _can_batch(assistant),
        },
        "headline": list(task.headline),
        "n_items": len(per_item),
        "n_scored": len(per_item) - len(skipped),
        "skipped": skipped,
        "metrics": metrics,
        "breakdown": breakdown,
        "items": per_item,
        "seconds": round(time.perf_counter() - started, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    results["markdown"] = markdown_table(results)
    return results


def _item_record(item: Item) -> dict[str, Any]:
    record = {"id": item.id, "references": item.references}
    if item.question:
        record["question"] = item.question
    if item.image is not None:
        record["image"] = str(item.image)
    if item.audio is not None:
        record["audio"] = str(item.audio)
    if item.meta:
        record["meta"] = item.meta
    record["results"] = {}
    return record


def _run_generation(assistant, task: Task, items: list[Item], conditions: list[str], batch_size: int,
                    max_new_tokens: int, speaker, progress: bool,
                    system: str | None = None) -> tuple[list[dict], list[dict]]:
    media = _Media(speaker)
    preamble = [{"role": "system", "content": system}] if system is not None else []
    records = [_item_record(item) for item in items]
    skipped: list[dict] = []
    # Questions asked by speech (ASR's "native" condition is a recording to transcribe, not a question).
    speech = [c for c in conditions if c in SPEECH_CONDITIONS] if task.kind == "qa" else []
    transcribe_questions = bool(speech) and has_transcriber(assistant)

    def skip(index: int, reason: str, detail: str) -> None:
        records[index]["skipped"] = reason
        records[index]["results"] = {}
        skipped.append({"id": items[index].id, "reason": reason, "detail": detail})

    bar = _progress(len(items), f"{task.name} [{', '.join(conditions)}]", progress)
    try:
        for start in range(0, len(items), batch_size):
            indices = list(range(start, min(start + batch_size, len(items))))
            images, audios, transcripts = {}, {}, {}
            for i in list(indices):
                item = items[i]
                try:
                    if task.kind == "asr":
                        audios[i] = media.audio(item.audio)
                    else:
                        images[i] = media.image(item) if item.image is not None else None
                        if speech:
                            audios[i] = media.spoken_question(item)
                except (OSError, ValueError) as exc:
                    if isinstance(exc, EvalError):
                        raise
                    skip(i, _media_error(exc), f"{exc}")
                    indices.remove(i)
                    continue
                if speech and transcribe_questions:
                    transcripts[i] = assistant.transcribe(audios[i])
            for condition in conditions:
                if task.kind == "asr" and condition == "whisper":
                    answers = [assistant.transcribe(audios[i]) for i in indices]
                else:
                    conversations = []
                    for i in indices:
                        if task.kind == "asr":
                            content = [{"type": "audio", "audio": audios[i]}, {"type": "text", "text": items[i].after}]
                        else:
                            content = _question_content(items[i], images[i], condition, audios.get(i), transcripts.get(i))
                        conversations.append([*preamble, *items[i].history, {"role": "user", "content": content}])
                    answers = generate_answers(assistant, conversations, max_new_tokens)
                for i, answer in zip(indices, answers):
                    if "skipped" in records[i]:
                        continue
                    if answer is None:
                        skip(i, "too_long", f"the {condition} prompt does not fit the model's context")
                        continue
                    result = {"prediction": answer, **task.score(items[i], answer)}
                    if speech and condition in SPEECH_CONDITIONS and i in transcripts:
                        errors, words = M.wer_counts(items[i].question, transcripts[i])
                        result.update(transcript=transcripts[i], question_errors=errors, question_words=words)
                    records[i]["results"][condition] = result
            bar.update(min(start + batch_size, len(items)) - start)
    finally:
        bar.close()
    return records, skipped


def _aggregate(task: Task, items: list[Item], records: list[dict], conditions: list[str], skipped: list[dict]):
    """Aggregates over the items scored under every condition (so side-by-side columns compare
    the same questions)."""
    kept = [(item, record) for item, record in zip(items, records) if "skipped" not in record]
    if not kept:
        reasons = sorted({s["reason"] for s in skipped})
        example = skipped[0]["detail"] if skipped else ""
        raise EvalError(f"no item could be scored ({', '.join(reasons)}): {example}")
    metrics, breakdown = {}, {}
    for condition in conditions:
        its = [item for item, _ in kept]
        results = [record["results"][condition] for _, record in kept]
        metrics[condition], breakdown[condition] = task.aggregate(its, results)
        with_transcripts = [r for r in results if "question_words" in r]
        if with_transcripts:
            words = sum(r["question_words"] for r in with_transcripts)
            errors = sum(r["question_errors"] for r in with_transcripts)
            metrics[condition]["question_wer"] = 100.0 * errors / words if words else 0.0
    return metrics, breakdown


# --------------------------------------------------------------------------- perplexity


def perplexity_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window. Every token after the first is
    scored exactly once, with up to window-1 tokens of context, when stride < window (with
    stride == window, the first token of each window has no context and is not scored)."""
    spans, previous_end, begin = [], 0, 0
    while True:
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(previous_end, begin + 1)))
        previous_end = end
        if end >= n_tokens:
            return spans
        begin += stride


def _run_perplexity(assistant, item: Item, limit, window, stride, progress):
    if not callable(getattr(assistant, "token_logprobs", None)):
        raise EvalError("perplexity needs a loaded model (its token probabilities)")
    tokenizer = assistant.processor.tokenizer
    context = int(getattr(assistant, "context_tokens", 2048))
    window = window or min(context, 1024)
    stride = stride or max(1, window // 2)
    if not 2 <= window <= context:
        raise EvalError(f"--window must be between 2 and the model's context ({context})")
    if not 1 <= stride <= window:
        raise EvalError("--stride must be between 1 and --window")
    # The tokenizer's own special tokens (a BOS for Llama-style models), no chat template:
    # this measures the language model on plain text.
    ids = tokenizer(item.question)["input_ids"]
    if len(ids) < 2:
        raise EvalError("the text has fewer than 2 tokens")
    spans = perplexity_windows(len(ids), window, stride)[: limit or None]
    records = []
    bar = _progress(len(spans), "perplexity", progress)
    try:
        for k, (begin, end, first) in enumerate(spans):
            nll = -assistant.token_logprobs(ids[begin:end])  # entry j scores token begin+j+1
            scored = nll[first - begin - 1:]
            records.append({"id": f"window-{k}", "begin": begin, "end": end,
                            "results": {"text": {"tokens": int(scored.numel()), "nll": float(scored.double().sum())}}})
            bar.update(1)
    finally:
        bar.close()
    tokens = sum(r["results"]["text"]["tokens"] for r in records)
    total = sum(r["results"]["text"]["nll"] for r in records)
    metrics = {"text": {"perplexity": M.perplexity(total, tokens), "nll_per_token": total / tokens,
                        "tokens": tokens, "windows": len(records), "window": window, "stride": stride,
                        "text_tokens": len(ids)}}
    if not math.isfinite(metrics["text"]["perplexity"]):
        metrics["text"]["perplexity"] = None  # JSON has no inf; an overflow is reported as null
    return records, metrics, []


# --------------------------------------------------------------------------- reporting


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(results: dict[str, Any]) -> str:
    """One table of metrics (rows) by condition (columns), headline metrics first; then one
    table per breakdown group (rows: its values; columns: metric, or metric (condition) when
    several conditions run side by side)."""
    conditions = results["conditions"]
    metrics, breakdown = results["metrics"], results["breakdown"]
    names: list[str] = [n for n in results["headline"] if any(n in metrics.get(c, {}) for c in conditions)]
    for c in conditions:
        names += [n for n in metrics.get(c, {}) if n not in names]
    lines = [f"| {results['task']} ({results['model']}) | " + " | ".join(conditions) + " |",
             "|" + "---|" * (len(conditions) + 1)]
    lines += ["| " + " | ".join([n] + [_cell(metrics.get(c, {}).get(n)) for c in conditions]) + " |" for n in names]
    groups: list[str] = []
    for c in conditions:
        groups += [g for g in breakdown.get(c, {}) if g not in groups]
    for group in groups:
        values: list[str] = []
        columns: list[str] = []
        for c in conditions:
            for value, numbers in breakdown.get(c, {}).get(group, {}).items():
                if value not in values:
                    values.append(value)
                columns += [m for m in numbers if m not in columns]
        heads = [(m, c) for m in columns for c in conditions]
        title = [m if len(conditions) == 1 else f"{m} ({c})" for m, c in heads]
        lines += ["", "| " + " | ".join([group] + title) + " |", "|" + "---|" * (len(heads) + 1)]
        for value in values:
            cells = [_cell(breakdown.get(c, {}).get(group, {}).get(value, {}).get(m)) for m, c in heads]
            lines.append("| " + " | ".join([value] + cells) + " |")
    return "\n".join(lines)
