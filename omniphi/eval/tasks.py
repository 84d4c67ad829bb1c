"""The benchmarks: name → loader (published file layout → items) + prompt + per-item score +
aggregate metrics.

An :class:`Item` is one question, with its media as *paths* (decoded a batch at a time by the
runner, so VQAv2's 214k questions do not sit in memory as images). The text prompt is
``before + question + after``; asking by speech replaces only ``question`` by audio and keeps
the rest (the instruction, ScienceQA's options) as text, so text and speech runs differ in the
question's modality and nothing else.

Prompts follow LLaVA-1.5's evaluation prompts: short-answer VQA gets "Answer the question using
a single word or phrase.", ScienceQA gets lettered options and "Answer with the option's letter
from the given choices directly.", MME's questions already end in "Please answer yes or no.".

Scores per item are what the aggregate needs (so a results JSON can be re-aggregated and
checked); aggregates are percentages, as the papers report them (WER too).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

from omniphi.eval import metrics as M
from omniphi.errors import UserError

SHORT_ANSWER = "Answer the question using a single word or phrase."
SCIENCEQA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MME_SUFFIX = "Please answer yes or no."
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class EvalError(UserError, ValueError):
    """A user-facing problem with the data or the options (one line, exit status 2)."""


@dataclass
class Item:
    id: str
    references: list[str]
    question: str = ""
    before: str = ""  # text before the question (ScienceQA's context)
    after: str = ""  # text after it (the answer-format instruction, options)
    image: Path | None = None
    audio: Path | None = None  # the spoken question (shapes) or the recording to transcribe (ASR)
    meta: dict[str, Any] = field(default_factory=dict)
    image_last: bool = False  # the picture after the question's text (OpenAI's documented order)
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier turns (messages) of a follow-up

    @property
    def prompt(self) -> str:
        return self.before + self.question + self.after


@dataclass
class LoadOptions:
    images: Path | None = None  # overrides where a benchmark's images are looked for
    split: str | None = None
    limit: int | None = None
    image_order: str = "mixed"  # shapes: IMAGE_ORDERS


@dataclass
class Task:
    name: str
    description: str
    data_help: str
    kind: str  # "qa" (generate an answer), "asr" (transcribe), "perplexity"
    load: Callable[[Path, LoadOptions], list[Item]]
    score: Callable[[Item, str], dict[str, Any]] | None = None
    aggregate: Callable[[list[Item], list[dict]], tuple[dict, dict]] | None = None
    max_new_tokens: int = 16
    headline: tuple[str, ...] = ("accuracy",)
    default_ask_by: tuple[str, ...] = ("text",)


# --------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: not valid JSON: {exc}") from None


def _read_json_lines(path: Path) -> list[Any]:
    """JSON Lines, or one JSON array (POPE's files are named .json but hold one object a line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"file not found: {path}") from None
    if text.lstrip().startswith("["):
        return _read_json(path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
    return rows


def find_image(name: str, folders: list[Path | None]) -> Path:
    """The image ``name`` in the first folder that has it; the same stem with another image
    extension counts too (a converted copy, or our PNG fixtures for COCO's .jpg names). When no
    folder has it, the first candidate is returned and the runner reports it as missing."""
    candidates = [Path(f) / name for f in folders if f is not None]
    for path in candidates:
        if path.is_file():
            return path
        for ext in IMAGE_EXTENSIONS:
            other = path.with_suffix(ext)
            if other.is_file():
                return other
    return candidates[0]


def _limited(rows: list, options: LoadOptions) -> list:
    return rows[: options.limit] if options.limit else rows


def _need(record: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise EvalError(f"{where}: expected fields {', '.join(keys)}")


def _accuracy(results: list[dict], key: str = "correct") -> float:
    return 100.0 * fmean(float(r[key]) for r in results) if results else 0.0


def _grouped(items: list[Item], results: list[dict], group: Callable[[Item], str | None], key: str = "correct") -> dict:
    groups: dict[str, list[dict]] = {}
    for item, result in zip(items, results):
        name = group(item)
        if name is not None:
            groups.setdefault(str(name), []).append(result)
    return {name: {"accuracy": _accuracy(rs, key), "n": len(rs)} for name, rs in sorted(groups.items())}


def _accuracy_aggregate(key: str = "correct", *groups: tuple[str, Callable[[Item], str | None]]):
    def aggregate(items: list[Item], results: list[dict]) -> tuple[dict, dict]:
        metrics = {"accuracy": _accuracy(results, key), "n": len(results)}
        breakdown = {name: _grouped(items, results, fn, key) for name, fn in groups}
        return metrics, {k: v for k, v in breakdown.items() if v}

    return aggregate


def _score_vqa(item: Item, prediction: str) -> dict:
    return {"score": M.vqa_accuracy(prediction, item.references)}


def _score_exact_gqa(item: Item, prediction: str) -> dict:
    return {"correct": M.gqa_match(prediction, item.references[0])}


# --------------------------------------------------------------------------- VQAv2


def _only(paths: list[Path], what: str, where: Path, hint: str) -> Path:
    if not paths:
        raise EvalError(f"no {what} file in {where} ({hint})")
    if len(paths) > 1:
        raise EvalError(f"several {what} files in {where}: {', '.join(p.name for p in paths)}; pass the questions file as --data")
    return paths[0]


def load_vqav2(path: Path, options: LoadOptions) -> list[Item]:
    """--data: a folder with the questions JSON (v2_OpenEnded_mscoco_<subtype>_questions.json) and
    the annotations JSON (v2_mscoco_<subtype>_annotations.json), or the questions file itself.
    Images: COCO_<subtype>_<image_id:012d>.jpg in --images, <folder>/<subtype>, <folder>/images
    or <folder>."""
    if path.is_dir():
        folder = path
        questions_file = _only(sorted(path.glob("*questions*.json")), "questions", path, "v2_OpenEnded_mscoco_*_questions.json")
    else:
        folder, questions_file = path.parent, path
    questions = _read_json(questions_file)
    _need(questions, ("questions",), str(questions_file))
    subtype = str(questions.get("data_subtype", "val2014"))
    annotation_files = sorted(folder.glob("*annotations*.json"))
    if len(annotation_files) > 1:  # e.g. train and val side by side: take the matching subtype
        annotation_files = [p for p in annotation_files if subtype in p.name] or annotation_files
    annotations_file = _only(annotation_files, "annotations", folder,
                             "VQAv2 test splits have no public annotations; they are scored on EvalAI")
    annotations = _read_json(annotations_file)
    _need(annotations, ("annotations",), str(annotations_file))
    by_id = {a["question_id"]: a for a in annotations["annotations"]}
    image_folders = [options.images, folder / subtype, folder / "images", folder]
    items = []
    for q in questions["questions"]:
        _need(q, ("question_id", "question", "image_id"), str(questions_file))
        ann = by_id.get(q["question_id"])
        if ann is None:
            continue
        items.append(Item(
            id=str(q["question_id"]),
            references=[a["answer"] for a in ann["answers"]],
            question=q["question"],
            after="\n" + SHORT_ANSWER,
            image=find_image(f"COCO_{subtype}_{int(q['image_id']):012d}.jpg", image_folders),
            meta={"answer_type": ann.get("answer_type"), "question_type": ann.get("question_type"), "image_id": q["image_id"]},
        ))
        if options.limit and len(items) >= options.limit:
            break
    if not items:
        raise EvalError(f"no question in {questions_file} has an annotation in {annotations_file}")
    return items


# --------------------------------------------------------------------------- GQA


def load_gqa(path: Path, options: LoadOptions) -> list[Item]:
    """--data: a balanced questions JSON ({question id: {imageId, question, answer, types, ...}},
    e.g. testdev_balanced_questions.json). Images: <imageId>.jpg in --images, <folder>/images or
    <folder>."""
    if path.is_dir():
        path = _only(sorted(path.glob("*questions*.json")), "questions", path, "e.g. testdev_balanced_questions.json")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected an object of questions keyed by question id")
    folders = [options.images, path.parent / "images", path.parent]
    items = []
    for qid, q in _limited(list(data.items()), options):
        _need(q, ("imageId", "question", "answer"), f"{path}: question {qid}")
        types = q.get("types") or {}
        items.append(Item(
            id=str(qid), references=[q["answer"]], question=q["question"], after="\n" + SHORT_ANSWER,
            image=find_image(f"{q['imageId']}.jpg", folders),
            meta={"structural": types.get("structural"), "semantic": types.get("semantic"), "detailed": types.get("detailed")},
        ))
    return items


# --------------------------------------------------------------------------- TextVQA


def load_textvqa(path: Path, options: LoadOptions) -> list[Item]:
    """--data: TextVQA_0.5.1_val.json ({"data": [{question_id, question, image_id, answers}]}).
    Images: <image_id>.jpg in --images, <folder>/train_images (val images live there), <folder>/
    test_images, <folder>/images or <folder>."""
    data = _read_json(path)
    _need(data, ("data",), str(path))
    folder = path.parent
    folders = [options.images, folder / "train_images", folder / "test_images", folder / "images", folder]
    items = []
    for q in _limited(data["data"], options):
        _need(q, ("question_id", "question", "image_id"), str(path))
        if not q.get("answers"):
            raise EvalError(f"{path}: question {q['question_id']} has no answers (the test split is scored on EvalAI)")
        items.append(Item(
            id=str(q["question_id"]), references=list(q["answers"]), question=q["question"], after="\n" + SHORT_ANSWER,
            image=find_image(f"{q['image_id']}.jpg", folders), meta={"image_id": q["image_id"]},
        ))
    return items


# --------------------------------------------------------------------------- POPE


def load_pope(path: Path, options: LoadOptions) -> list[Item]:
    """--data: one POPE file (coco_pope_random.json: one {question_id, image, text, label} a
    line) or a folder of them (each file is a split: random, popular, adversarial). Images: the
    `image` name in --images, <folder>/val2014, <folder>/images or <folder>."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise EvalError(f"no POPE .json/.jsonl files in {path}")
    folder = path if path.is_dir() else path.parent
    folders = [options.images, folder / "val2014", folder / "images", folder]
    items = []
    for file in files:
        split = file.stem.replace("coco_pope_", "")
        for row in _read_json_lines(file):
            _need(row, ("question_id", "image", "text", "label"), str(file))
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise EvalError(f"{file}: question {row['question_id']}: label must be yes or no, not {row['label']!r}")
            items.append(Item(
                id=f"{split}/{row['question_id']}" if len(files) > 1 else str(row["question_id"]),
                references=[label], question=row["text"], after="\n" + SHORT_ANSWER,
                image=find_image(row["image"], folders), meta={"split": split},
            ))
    return _limited(items, options)


def _score_pope(item: Item, prediction: str) -> dict:
    parsed = M.parse_yes_no(prediction)
    return {"parsed": parsed, "correct": parsed == item.references[0]}


def _pope_table(items: list[Item], results: list[dict]) -> dict:
    counts = M.pope_metrics([r["parsed"] for r in results], [i.references[0] for i in items])
    return {k: (100.0 * v if isinstance(v, float) else v) for k, v in counts.items()}


def _aggregate_pope(items: list[Item], results: list[dict]) -> tuple[dict, dict]:
    metrics = _pope_table(items, results)
    splits: dict[str, tuple[list, list]] = {}
    for item, result in zip(items, results):
        its, rs = splits.setdefault(item.meta["split"], ([], []))
        its.append(item)
        rs.append(result)
    breakdown = {"split": {s: _pope_table(*v) for s, v in sorted(splits.items())}} if len(splits) > 1 else {}
    return metrics, breakdown


# --------------------------------------------------------------------------- ScienceQA


def load_scienceqa(path: Path, options: LoadOptions) -> list[Item]:
    """--data: the ScienceQA folder with problems.json (and pid_splits.json) and images/<split>/
    <pid>/image.png, or problems.json itself. Only questions with an image (ScienceQA-IMG);
    --split defaults to test."""
    folder = path if path.is_dir() else path.parent
    problems = _read_json(folder / "problems.json" if path.is_dir() else path)
    if not isinstance(problems, dict):
        raise EvalError(f"{folder / 'problems.json'}: expected an object of problems keyed by id")
    split = options.split or "test"
    splits_file = folder / "pid_splits.json"
    if splits_file.exists():
        pids = [str(p) for p in _read_json(splits_file).get(split, [])]
    else:
        pids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == split]
    items = []
    for pid in pids:
        p = problems.get(pid)
        _need(p, ("question", "choices", "answer"), f"problems.json: {pid}")
        if not p.get("image"):
            continue
        choices = [str(c) for c in p["choices"]]
        if len(choices) > len(M.LETTERS) or not 0 <= int(p["answer"]) < len(choices):
            raise EvalError(f"problems.json: {pid}: answer {p['answer']} is not one of {len(choices)} choices")
        hint = str(p.get("hint") or "").strip()
        options_text = "\n".join(f"{M.LETTERS[i]}. {c}" for i, c in enumerate(choices))
        grade = str(p.get("grade", ""))
        number = int(grade[5:]) if grade.startswith("grade") and grade[5:].isdigit() else None
        items.append(Item(
            id=pid, references=[M.LETTERS[int(p["answer"])]], question=p["question"],
            before=f"Context: {hint}\n" if hint else "", after=f"\n{options_text}\n{SCIENCEQA_INSTRUCTION}",
            image=find_image(p["image"], [options.images and options.images / pid, folder / "images" / split / pid,
                                          folder / "images" / pid, folder / split / pid]),
            meta={"choices": choices, "subject": p.get("subject"),
                  "grade": None if number is None else ("G1-6" if number <= 6 else "G7-12")},
        ))
        if options.limit and len(items) >= options.limit:
            break
    if not items:
        raise EvalError(f"no {split} question with an image in {folder}")
    return items


def _score_scienceqa(item: Item, prediction: str) -> dict:
    index = M.parse_choice(prediction, item.meta["choices"])
    parsed = None if index is None else M.LETTERS[index]
    return {"parsed": parsed, "correct": parsed == item.references[0]}


# --------------------------------------------------------------------------- MME


def _mme_category_files(folder: Path) -> tuple[list[Path], Path]:
    qa = folder / "questions_answers_YN"
    if qa.is_dir():  # artwork, celebrity, landmark, posters, scene
        return sorted(qa.glob("*.txt")), folder / "images"
    return sorted(folder.glob("*.txt")), folder  # the others: image.jpg + image.txt side by side


def load_mme(path: Path, options: LoadOptions) -> list[Item]:
    """--data: MME_Benchmark_release_version (one folder per category; each image has a .txt of
    two "question<TAB>Yes|No" lines, beside it or in questions_answers_YN/ with images/), or one
    category folder."""
    if not path.is_dir():
        raise EvalError(f"MME data must be a folder of category folders: {path}")
    own_files, _ = _mme_category_files(path)
    categories = [path] if own_files else sorted(p for p in path.iterdir() if p.is_dir() and _mme_category_files(p)[0])
    if not categories:
        raise EvalError(f"no MME category folders (with question .txt files) in {path}")
    items = []
    for category in categories:
        files, image_folder = _mme_category_files(category)
        for txt in files:
            lines = [l for l in txt.read_text(encoding="utf-8").splitlines() if l.strip()]
            for k, line in enumerate(lines):
                question, sep, answer = line.rpartition("\t")
                answer = answer.strip()
                if not sep or answer.lower() not in ("yes", "no"):
                    raise EvalError(f"{txt}: line {k + 1}: expected 'question<TAB>Yes|No'")
                question = question.strip()
                after = ""
                if question.endswith(MME_SUFFIX):  # spoken, only the question itself is said
                    question, after = question[: -len(MME_SUFFIX)].rstrip(), " " + MME_SUFFIX
                items.append(Item(
                    id=f"{category.name}/{txt.stem}/{k}", references=[answer], question=question, after=after,
                    image=find_image(f"{txt.stem}.jpg", [image_folder]),
                    meta={"category": category.name, "image_key": f"{category.name}/{txt.stem}"},
                ))
    return _limited(items, options)


def _score_mme(item: Item, prediction: str) -> dict:
    parsed = M.parse_mme_answer(prediction)
    return {"parsed": parsed, "correct": parsed == item.references[0].lower()}


def _aggregate_mme(items: list[Item], results: list[dict]) -> tuple[dict, dict]:
    rows: dict[str, list[tuple[str, bool]]] = {}
    for item, result in zip(items, results):
        rows.setdefault(item.meta["category"], []).append((item.meta["image_key"], result["correct"]))
    categories = {c: M.mme_category_scores(r) for c, r in sorted(rows.items())}
    metrics = {**M.mme_totals(categories), "accuracy": _accuracy(results), "n": len(results),
               "categories": len(categories)}
    return metrics, {"category": categories}


# --------------------------------------------------------------------------- custom text/image QA


def load_qa(path: Path, options: LoadOptions) -> list[Item]:
    """--data: JSON Lines {"id", "question", "answers": [...] (or "answer"), "image": optional
    path relative to the file, "history": optional [[question, answer], ...] asked before it (a
    follow-up: "And of Germany?" after the capital of France)} — for quick checks of your own questions."""
    items = []
    for n, row in enumerate(_read_json_lines(path), 1):
        if not isinstance(row, dict) or "question" not in row or not (row.get("answers") or row.get("answer")):
            raise EvalError(f"{path}:{n}: needs 'question' and 'answers' (or 'answer')")
        answers = row.get("answers") or [row["answer"]]
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
        image = find_image(row["image"], [options.images, path.parent]) if row.get("image") else None
        history = row.get("history") or []
        if not isinstance(history, list) or not all(
                isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history):
            raise EvalError(f"{path}:{n}: 'history' must be a list of [question, answer] pairs")
        messages = [{"role": role, "content": text} for q, a in history for role, text in (("user", q), ("assistant", a))]
        items.append(Item(id=str(row.get("id", n)), references=answers, question=row["question"], image=image,
                          history=messages))
    return _limited(items, options)


def _score_qa(item: Item, prediction: str) -> dict:
    """exact: the normalised answer is a reference; contains: a reference appears, as whole
    words, in the normalised answer ("The capital of France is Paris." contains "Paris")."""
    pred = M.normalize_vqa_answer(prediction)
    refs = [M.normalize_vqa_answer(r) for r in item.references]
    padded = f" {pred} "
    return {"exact": pred in refs, "contains": any(r and f" {r} " in padded for r in refs)}


def _aggregate_qa(items: list[Item], results: list[dict]) -> tuple[dict, dict]:
    return {"accuracy": _accuracy(results, "contains"), "exact_match": _accuracy(results, "exact"), "n": len(results)}, {}


# --------------------------------------------------------------------------- speech recognition


def load_asr(path: Path, options: LoadOptions) -> list[Item]:
    """--data: a LibriSpeech folder (<speaker>/<chapter>/*.trans.txt + .flac, searched
    recursively) or an ASR manifest (JSON Lines {"audio", "text"[, "id"]})."""
    from omniphi.data.llava import DataFileError
    from omniphi.data.speech import DEFAULT_ASR_PROMPT, AsrManifestDataset, LibriSpeechDataset

    try:
        # The published transcript is the reference; normalisation happens in the metric.
        dataset = LibriSpeechDataset(path, case="original") if path.is_dir() else AsrManifestDataset(path)
    except DataFileError as exc:
        raise EvalError(str(exc)) from None
    items = [
        Item(id=i, references=[t], audio=Path(p), after=DEFAULT_ASR_PROMPT)
        for i, p, t in zip(dataset.ids, dataset.paths, dataset.texts)
    ]
    return _limited(items, options)


def _score_asr(item: Item, prediction: str) -> dict:
    errors, words = M.wer_counts(item.references[0], prediction)
    return {"errors": errors, "words": words}


def _aggregate_asr(items: list[Item], results: list[dict]) -> tuple[dict, dict]:
    errors, words = sum(r["errors"] for r in results), sum(r["words"] for r in results)
    return {"wer": 100.0 * errors / words if words else 0.0, "errors": errors, "words": words, "n": len(results)}, {}


# --------------------------------------------------------------------------- perplexity


def load_text(path: Path, options: LoadOptions) -> list[Item]:
    """--data: a plain UTF-8 text file, scored as one token stream."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise EvalError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise EvalError(f"{path} is empty")
    return [Item(id=path.name, references=[], question=text)]


# --------------------------------------------------------------------------- shapes


# Where the shapes task puts the picture: "mixed" after the question in a fixed half of the questions
# (a hash of the id), so one run reports both orders as the "image_order" groups; "first" or "last"
# in every question, so two runs compare the orders on the same questions.
IMAGE_ORDERS = ("mixed", "first", "last")


def _image_last(item_id: str, order: str) -> bool:
    import hashlib

    if order != "mixed":
        return order == "last"
    return hashlib.sha256(f"image-order:{item_id}".encode()).digest()[0] % 2 == 1


def load_shapes_task(path: Path, options: LoadOptions) -> list[Item]:
    """--data: a folder written by `omniphi data shapes`; --split defaults to test. Spoken
    questions come from <split>_spoken.json where it exists (else they are synthesised). Half the
    questions are asked with the picture after the text (grouped as "image_order"), or all of them
    with it first or last (`options.image_order`)."""
    from omniphi.data.llava import DataFileError
    from omniphi.data.shapes import load_shapes

    split = options.split or "test"
    if options.image_order not in IMAGE_ORDERS:
        raise EvalError(f"--image-order must be one of {', '.join(IMAGE_ORDERS)}, not {options.image_order!r}")
    if not (path / "metadata.json").is_file():
        raise EvalError(f"{path} is not a shapes dataset (no metadata.json); write one with `omniphi data shapes`")
    try:
        dataset = load_shapes(path, split)
        spoken = load_shapes(path, split, spoken=True) if (path / f"{split}_spoken.json").is_file() else None
    except DataFileError as exc:
        raise EvalError(str(exc)) from None
    audio: dict[str, Path] = {}
    if spoken is not None:
        for i in range(len(spoken)):
            record = spoken.record(i)
            clips = record.get("audio")
            clip = clips if isinstance(clips, str) else (clips or [None])[0]
            if clip:
                audio[str(record["id"])] = spoken.audio_folder / clip
    items = []
    for i in range(len(dataset) if not options.limit else min(options.limit, len(dataset))):
        r = dataset.record(i)
        last = _image_last(str(r["id"]), options.image_order)
        items.append(Item(
            id=str(r["id"]), references=[r["answer"]], question=r["question"],
            image=dataset.image_folder / r["image"], audio=audio.get(str(r["id"])), image_last=last,
            meta={"question_type": r.get("question_type"), "heldout": bool(r.get("heldout")),
                  "image_order": "image last" if last else "image first"},
        ))
    if not items:
        raise EvalError(f"the {split} split of {path} has no questions")
    return items


def _score_shapes(item: Item, prediction: str) -> dict:
    from omniphi.data.shapes import answer_matches

    return {"correct": answer_matches(prediction, item.references[0])}


# --------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {}


def register(task: Task, *aliases: str) -> Task:
    for name in (task.name, *aliases):
        TASKS[name] = task
    return task


register(Task("vqav2", "VQAv2 (VQA accuracy over 10 human answers)", "folder with the questions + annotations JSON",
              "qa", load_vqav2, _score_vqa,
              _accuracy_aggregate("score", ("answer_type", lambda i: i.meta.get("answer_type")))), "vqa")
register(Task("spoken-vqa", "VQAv2 asked as text and as speech, side by side", "as vqav2",
              "qa", load_vqav2, _score_vqa,
              _accuracy_aggregate("score", ("answer_type", lambda i: i.meta.get("answer_type"))),
              default_ask_by=("text", "native", "transcribe")))
register(Task("gqa", "GQA balanced (exact match)", "balanced questions JSON (images/ beside it)",
              "qa", load_gqa, _score_exact_gqa,
              _accuracy_aggregate("correct", ("structural", lambda i: i.meta.get("structural")),
                                  ("semantic", lambda i: i.meta.get("semantic")))))
register(Task("textvqa", "TextVQA (VQA accuracy)", "TextVQA_0.5.1_val.json (train_images/ beside it)",
              "qa", load_textvqa, _score_vqa, _accuracy_aggregate("score")))
register(Task("pope", "POPE object hallucination (accuracy, precision, recall, F1, yes-ratio)",
              "a POPE .json(l) file or a folder of them", "qa", load_pope, _score_pope, _aggregate_pope,
              max_new_tokens=8, headline=("accuracy", "f1", "yes_ratio")))
register(Task("scienceqa", "ScienceQA-IMG (choice accuracy)", "folder with problems.json, pid_splits.json, images/",
              "qa", load_scienceqa, _score_scienceqa,
              _accuracy_aggregate("correct", ("subject", lambda i: i.meta.get("subject")),
                                  ("grade", lambda i: i.meta.get("grade")))), "scienceqa-img")
register(Task("mme", "MME (acc + acc+ per category; perception and cognition totals)",
              "MME_Benchmark_release_version folder", "qa", load_mme, _score_mme, _aggregate_mme,
              max_new_tokens=8, headline=("perception", "cognition")))
register(Task("qa", "your own questions (contains / exact match)", "JSON Lines of {question, answers[, image]}",
              "qa", load_qa, _score_qa, _aggregate_qa, max_new_tokens=48, headline=("accuracy", "exact_match")))
register(Task("shapes", "omniphi's synthetic shapes (normalised exact match)", "folder written by `omniphi data shapes`",
              "qa", load_shapes_task, _score_shapes,
              _accuracy_aggregate("correct", ("question_type", lambda i: i.meta.get("question_type")),
                                  ("pairs", lambda i: "held-out" if i.meta.get("heldout") else "seen"),
                                  ("image_order", lambda i: i.meta.get("image_order")))))
register(Task("asr", "speech recognition WER (Whisper's transcript and the native path)",
              "LibriSpeech folder or ASR manifest (.jsonl)", "asr", load_asr, _score_asr, _aggregate_asr,
              max_new_tokens=200, headline=("wer",)), "librispeech", "wer")
register(Task("perplexity", "token-level perplexity of a text file (sliding window)", "plain-text file",
              "perplexity", load_text, headline=("perplexity",)), "ppl")


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise EvalError(f"unknown task {name!r}; known: {', '.join(sorted(set(t.name for t in TASKS.values())))}") from None


def task_names() -> list[str]:
    return sorted(TASKS)


def check_data_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise EvalError(f"data not found: {p}")
    return p
