"""The benchmarks' scoring rules, written from their published definitions.

Every function here is pure (strings and numbers in, numbers out) so it can be checked against
hand-worked examples without a model. Accuracies and rates are returned as fractions; the
tasks turn them into the percentages the papers report.

* VQA accuracy (VQAv2, TextVQA): an answer is worth min(#annotators who gave it / 3, 1),
  averaged over the 10 subsets of 9 of the 10 human answers, after the VQA answer
  normalisation (see :func:`normalize_vqa_answer`).
* GQA: exact match after lower-casing and dropping a final period.
* POPE: yes/no parsed from the answer's first sentence; accuracy, precision, recall, F1, yes-ratio.
* MME: yes/no parsed as the official calculation script does; per category acc (questions)
  and acc+ (images whose two questions are both right), score = acc + acc+ (in %), totals.
* ScienceQA: a letter parsed from the answer, compared with the gold option.
* WER: word-level Levenshtein distance over the reference length, after
  :func:`omniphi.eval.textnorm.normalize_english`.
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Iterable, Sequence

# --------------------------------------------------------------------------- VQA normalisation

# Contractions as the VQA evaluation script spells them. People type them without the
# apostrophes ("dont", "youre"), so every apostrophe-less variant maps back to the canonical
# form; both predictions and human answers go through this, so the direction only has to be
# consistent.
_CANONICAL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's
ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at
shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll
that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas
wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've
who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've
y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
# Dropping the apostrophe from these gives an ordinary word; the official map leaves such
# words alone ("its", "well", "lets" are not contractions there), and so do we.
_REAL_WORDS = {"hell", "shell", "well", "were", "id", "im", "ive", "its", "lets", "wed", "shed", "ill", "shes"}


def _contraction_map() -> dict[str, str]:
    mapping: dict[str, str] = {}
    for canonical in _CANONICAL_CONTRACTIONS:
        pieces = canonical.split("'")
        gaps = len(pieces) - 1
        for dropped in range(1, gaps + 1):
            for which in combinations(range(gaps), dropped):
                variant = pieces[0]
                for gap, piece in enumerate(pieces[1:]):
                    variant += ("" if gap in which else "'") + piece
                if variant not in _REAL_WORDS:
                    mapping[variant] = canonical
    return mapping


VQA_CONTRACTIONS = _contraction_map()
VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
VQA_ARTICLES = {"a", "an", "the"}
VQA_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# A period is punctuation unless a digit follows it ("2.5" keeps its point).
_PERIOD = re.compile(r"\.(?!\d)")


def _vqa_punctuation(text: str) -> str:
    """The VQA script's rule: a punctuation mark next to a space (or any mark in a text with a
    digit,digit comma) is deleted, otherwise it becomes a space ("t-shirt" → "t shirt",
    "yes, it is" → "yes it is", "1,000" → "1000")."""
    out = text
    drop_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in VQA_PUNCTUATION:
        if drop_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """The VQA answer normalisation (EvalAI's answer processor, as LLaVA and the TextVQA
    evaluator apply it): lower case, commas and question marks dropped, "'s" split off,
    punctuation removed, number words → digits (zero..ten, "none" → 0), articles dropped,
    apostrophe-less contractions restored."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = text.replace(",", "").replace("?", "").replace("'s", " 's")
    text = _vqa_punctuation(text)
    return _vqa_digits_articles(text)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(#humans that said the prediction / 3, 1), averaged over the len(answers) subsets that
    leave one human answer out (10 choose 9 for VQAv2/TextVQA)."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    total = 0.0
    for g in gts:
        others = matches - (g == pred)  # matching answers among the other len-1 humans
        total += min(1.0, others / 3.0)
    return total / len(gts)


# --------------------------------------------------------------------------- GQA


def normalize_gqa_answer(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def gqa_match(prediction: str, answer: str) -> bool:
    return normalize_gqa_answer(prediction) == normalize_gqa_answer(answer)


# --------------------------------------------------------------------------- POPE


def parse_yes_no(text: str) -> str:
    """POPE's reading of an answer (as in LLaVA's POPE script): look at the first sentence; "no"
    or "not" anywhere in it means no, anything else means yes (so a garbled answer is a yes)."""
    first = text.split(".")[0].replace(",", " ").lower()
    words = re.findall(r"[a-z']+", first)
    return "no" if ("no" in words or "not" in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Counts and rates (fractions) from parsed predictions and gold labels, both "yes"/"no";
    "yes" is the positive class."""
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    tp = sum(p == "yes" and l == "yes" for p, l in zip(predictions, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(predictions, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(predictions, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(predictions, labels))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
    }


# --------------------------------------------------------------------------- MME

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme_answer(text: str) -> str:
    """The MME calculation script's rule: "yes"/"no" if that is the whole answer, else look for
    them in the first four characters; anything else is "other" (always wrong)."""
    t = text.strip().lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_category_scores(rows: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """rows: (image key, question correct) for one category. acc: % of questions right; acc+:
    % of images with every question right; score = acc + acc+ (at most 200)."""
    per_image: dict[str, list[bool]] = {}
    for image, correct in rows:
        per_image.setdefault(image, []).append(bool(correct))
    questions = sum(len(v) for v in per_image.values())
    if not questions:
        raise ValueError("an MME category needs at least one question")
    acc = 100.0 * sum(sum(v) for v in per_image.values()) / questions
    acc_plus = 100.0 * sum(all(v) for v in per_image.values()) / len(per_image)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": questions, "images": len(per_image)}


def mme_totals(category_scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Perception = sum of the 10 perception categories' scores (max 2000), cognition = sum of
    the 4 cognition ones (max 800), over the categories present."""
    perception = sum(s["score"] for c, s in category_scores.items() if c in MME_PERCEPTION)
    cognition = sum(s["score"] for c, s in category_scores.items() if c in MME_COGNITION)
    return {"perception": perception, "cognition": cognition, "total": perception + cognition}


# --------------------------------------------------------------------------- ScienceQA

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """The option an answer picks, or None (scored wrong, as in LLaVA's ScienceQA script).
    Accepts "B", "B.", "(B)", "B) text", "B. text", "B: text", "The answer is B.", and the
    text of an option on its own (case-insensitive)."""
    valid = LETTERS[: len(choices)]
    t = text.strip()
    m = re.match(r"^\(?([A-Z])(?:\)|[.:,]|$)", t)  # not "A circle": that is an answer, not option A
    if m and m.group(1) in valid:
        return valid.index(m.group(1))
    m = re.search(r"answer is:?\s*\(?([A-Z])\b", t)
    if m and m.group(1) in valid:
        return valid.index(m.group(1))
    bare = " ".join(t.lower().rstrip(".").split())
    for i, choice in enumerate(choices):
        if bare == " ".join(str(choice).lower().rstrip(".").split()):
            return i
    return None


# --------------------------------------------------------------------------- WER


def word_errors(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance in words, or in any tokens (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


def wer_counts(reference: str, hypothesis: str, normalize=None) -> tuple[int, int]:
    """(errors, reference words) after normalisation (Whisper's English normaliser by default)."""
    if normalize is None:
        from omniphi.eval.textnorm import normalize_english as normalize
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    return word_errors(ref, hyp), len(ref)


def corpus_wer(pairs: Iterable[tuple[str, str]], normalize=None) -> float:
    """Corpus WER (fraction): total word errors over total reference words, as jiwer and the
    Whisper paper compute it (not the mean of per-utterance WERs)."""
    errors = words = 0
    for reference, hypothesis in pairs:
        e, n = wer_counts(reference, hypothesis, normalize)
        errors, words = errors + e, words + n
    return errors / words if words else 0.0


# --------------------------------------------------------------------------- perplexity


def perplexity(total_nll: float, tokens: int) -> float:
    if tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / tokens)
