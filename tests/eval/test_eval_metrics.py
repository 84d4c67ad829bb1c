"""The scoring rules against hand-worked examples."""

import math
import random

import jiwer
import pytest

from omniphi.eval import metrics as M
from omniphi.eval.runner import perplexity_windows
from omniphi.eval.textnorm import normalize_english


@pytest.mark.parametrize("raw, normal", [
    ("Two dogs.", "2 dogs"),                 # number words → digits, final period dropped
    ("The T-shirt", "t shirt"),              # article dropped, a dash inside a word → space
    ("yes, it is", "yes it is"),             # commas dropped
    ("dont know", "don't know"),             # apostrophe-less contraction restored
    ("A man's hat!", "man 's hat"),          # "'s" split off, "!" dropped
    ("2.5", "2.5"),                          # a period before a digit is kept
    ("none", "0"),
    ("left/right", "left right"),
    ("  Ten\tbirds \n", "10 birds"),
    ("an umbrella", "umbrella"),
    ("well", "well"),                        # a real word, not "we'll"
])
def test_vqa_normalisation(raw, normal):
    assert M.normalize_vqa_answer(raw) == normal


def test_vqa_accuracy_averages_over_the_ten_leave_one_out_subsets():
    # k of the 10 humans gave the answer: the k subsets without one of them see k-1 matches, the
    # other 10-k see k; each subset scores min(matches/3, 1).
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["cat"] * k + ["dog"] * (10 - k)
        assert M.vqa_accuracy("cat", answers) == pytest.approx(expected), k


def test_vqa_accuracy_normalises_both_sides():
    answers = ["kite"] * 5 + ["a kite"] * 2 + ["umbrella"] * 2 + ["an umbrella"]
    assert M.vqa_accuracy("Kite.", answers) == 1.0           # 7 humans after normalisation
    assert M.vqa_accuracy("umbrella", answers) == pytest.approx(0.9)  # 3 humans
    assert M.vqa_accuracy("bird", answers) == 0.0
    assert M.vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        M.vqa_accuracy("x", [])


def test_gqa_exact_match():
    assert M.gqa_match("Yes.", "yes")
    assert M.gqa_match("  Red ", "red")
    assert not M.gqa_match("dark red", "red")


def test_pope_parsing_and_counts():
    assert M.parse_yes_no("No, there is not.") == "no"
    assert M.parse_yes_no("Yes, there is a dog.") == "yes"
    assert M.parse_yes_no("There is no dog in the image.") == "no"
    assert M.parse_yes_no("Yes. No dog though.") == "yes"  # only the first sentence counts
    assert M.parse_yes_no("\ufffd\ufffd object") == "yes"   # anything without no/not is a yes
    m = M.pope_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)
    none_yes = M.pope_metrics(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["f1"] == 0.0 and none_yes["accuracy"] == 0.5


def test_mme_parsing_acc_plus_and_totals():
    assert M.parse_mme_answer("Yes") == "yes"
    assert M.parse_mme_answer("No.") == "no"
    assert M.parse_mme_answer("Yes, it is.") == "yes"
    assert M.parse_mme_answer("Maybe") == "other"
    # image a: both right, b: one right, c: none right
    s = M.mme_category_scores([("a", True), ("a", True), ("b", True), ("b", False), ("c", False), ("c", False)])
    assert s["acc"] == pytest.approx(50.0)
    assert s["acc_plus"] == pytest.approx(100 / 3)
    assert s["score"] == pytest.approx(50 + 100 / 3)
    assert (s["questions"], s["images"]) == (6, 3)
    totals = M.mme_totals({"existence": {"score": 150.0}, "artwork": {"score": 50.0},
                           "numerical_calculation": {"score": 100.0}})
    assert totals == {"perception": 200.0, "cognition": 100.0, "total": 300.0}


def test_choice_parsing():
    choices = ["square", "circle", "star"]
    assert M.parse_choice("B", choices) == 1
    assert M.parse_choice("(C)", choices) == 2
    assert M.parse_choice("B. circle", choices) == 1
    assert M.parse_choice("A) square", choices) == 0
    assert M.parse_choice("The answer is A.", choices) == 0
    assert M.parse_choice("Circle.", choices) == 1
    assert M.parse_choice("D", choices) is None        # not an option here
    assert M.parse_choice("A star", choices) is None   # an answer starting with "A", not option A
    assert M.parse_choice("I do not know", choices) is None


def test_english_normaliser():
    n = normalize_english
    assert n("MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES") == n("Mr. Quilter is the apostle of the middle classes.")
    assert n("I have twenty-one dollars.") == "i have $21" == n("I have $21")
    assert n("In nineteen ninety nine") == "in 1999"
    assert n("one hundred and five people") == "105 people"
    assert n("two thousand twenty") == "2020"
    assert n("three point one four percent") == "3.14%"
    assert n("It's the twenty first of May") == "it is the 21st of may"
    assert n("The colour of the centre [noise] uh is grey (laughs)") == "the color of the center is gray"
    assert n("I won't go, let's eat 1,000 apples") == "i will not go let us eat 1000 apples"
    assert n("café naïve") == "cafe naive"
    assert n("We realised they'd travelled") == "we realized they would traveled"


def test_wer_uses_the_normaliser_and_counts_corpus_wide():
    assert M.wer_counts("MISTER QUILTER IS THE APOSTLE", "Mr. Quilter is the apostle.") == (0, 5)
    assert M.wer_counts("I have twenty one dollars", "I have $21") == (0, 3)
    assert M.wer_counts("the cat sat", "the cat sat down") == (1, 3)       # one insertion
    assert M.wer_counts("the cat sat", "a cat") == (2, 3)                  # substitution + deletion
    pairs = [("a b c d", "a x c d"), ("e f", "e")]
    assert M.corpus_wer(pairs) == pytest.approx(2 / 6)  # not the mean of 1/4 and 1/2
    refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
    assert M.corpus_wer(pairs) == pytest.approx(jiwer.wer(refs, hyps))


def test_word_errors_agree_with_jiwer():
    rng = random.Random(0)
    for _ in range(100):
        ref = [rng.choice("abcd") for _ in range(rng.randint(1, 8))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(1, 8))]
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
        assert M.word_errors(ref, hyp) == out.substitutions + out.deletions + out.insertions


def test_perplexity_windows_score_every_token_once():
    assert perplexity_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    for n, window, stride in [(10, 4, 3), (50, 16, 5), (7, 32, 16), (33, 8, 7)]:
        scored = []
        for begin, end, first in perplexity_windows(n, window, stride):
            assert begin < first <= end and end - begin <= window
            scored += range(first, end)
        assert scored == list(range(1, n))
    assert M.perplexity(math.log(5.0) * 4, 4) == pytest.approx(5.0)
