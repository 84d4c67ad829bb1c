"""`omniphi eval` with the tiny preset on every task: the JSON's shape, and its metrics
recomputed from the per-item results it saved."""

import json
import math
import os
import subprocess
import sys
from statistics import fmean

import pytest

from omniphi.cli import main
from omniphi.eval import metrics as M
from tests.conftest import ROOT
from tests.eval.helpers import EVAL, LIBRISPEECH

TOP_KEYS = {"omniphi_eval", "task", "model", "data", "conditions", "settings", "n_items", "n_scored", "skipped",
            "metrics", "breakdown", "items", "markdown", "headline", "notes", "seconds", "created", "description"}


def run_cli(tmp_path, capsys, *args):
    out = tmp_path / "results.json"
    code = main(["eval", "--model", "tiny", "--no-progress", "--out", str(out), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(out.read_text())
    assert set(results) == TOP_KEYS
    assert results["model"] == "omniphi-tiny"
    assert results["markdown"] in captured.out  # the table is printed
    assert results["n_scored"] == results["n_items"] - len(results["skipped"])
    for item in results["items"]:
        if "skipped" not in item:
            assert set(item["results"]) == set(results["conditions"])
    return results


def scored(results, condition):
    return [i for i in results["items"] if "skipped" not in i], [
        i["results"][condition] for i in results["items"] if "skipped" not in i]


def mean_percent(values):
    return 100.0 * fmean(float(v) for v in values)


@pytest.mark.parametrize("task, data, key", [
    ("vqav2", EVAL / "vqav2", "score"),
    ("textvqa", EVAL / "textvqa" / "TextVQA_0.5.1_val.json", "score"),
    ("gqa", EVAL / "gqa" / "testdev_balanced_questions.json", "correct"),
    ("scienceqa", EVAL / "scienceqa", "correct"),
    ("qa", EVAL / "qa" / "questions.jsonl", "contains"),
])
def test_accuracy_tasks(tmp_path, capsys, task, data, key):
    results = run_cli(tmp_path, capsys, "--task", task, "--data", str(data), "--batch-size", "2", "--max-new-tokens", "4")
    assert results["conditions"] == ["text"]
    _, rs = scored(results, "text")
    assert results["metrics"]["text"]["accuracy"] == pytest.approx(mean_percent(r[key] for r in rs))
    assert results["metrics"]["text"]["n"] == len(rs) == results["n_items"]
    if task == "vqav2":  # every score is recomputable from the saved prediction and answers
        for item, r in zip(results["items"], rs):
            assert r["score"] == pytest.approx(M.vqa_accuracy(r["prediction"], item["references"]))


def test_pope(tmp_path, capsys):
    results = run_cli(tmp_path, capsys, "--task", "pope", "--data", str(EVAL / "pope"), "--max-new-tokens", "4")
    items, rs = scored(results, "text")
    assert all(r["parsed"] == M.parse_yes_no(r["prediction"]) for r in rs)
    expected = M.pope_metrics([r["parsed"] for r in rs], [i["references"][0] for i in items])
    m = results["metrics"]["text"]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (expected["tp"], expected["fp"], expected["tn"], expected["fn"])
    assert m["f1"] == pytest.approx(100 * expected["f1"]) and m["yes_ratio"] == pytest.approx(100 * expected["yes_ratio"])
    assert set(results["breakdown"]["text"]["split"]) == {"random", "adversarial"}


def test_mme(tmp_path, capsys):
    results = run_cli(tmp_path, capsys, "--task", "mme", "--data", str(EVAL / "mme" / "MME_Benchmark_release_version"),
                      "--max-new-tokens", "3", "--batch-size", "3")
    items, rs = scored(results, "text")
    rows = {}
    for item, r in zip(items, rs):
        rows.setdefault(item["meta"]["category"], []).append((item["meta"]["image_key"], r["correct"]))
    categories = {c: M.mme_category_scores(v) for c, v in rows.items()}
    saved = results["breakdown"]["text"]["category"]
    assert set(saved) == set(categories)
    for category, numbers in categories.items():
        assert saved[category] == pytest.approx(numbers)
    totals = M.mme_totals(categories)
    assert results["metrics"]["text"]["perception"] == pytest.approx(totals["perception"])
    assert results["metrics"]["text"]["cognition"] == pytest.approx(totals["cognition"])


def test_asr_native_path_with_a_missing_clip(tmp_path, capsys):
    results = run_cli(tmp_path, capsys, "--task", "asr", "--data", str(LIBRISPEECH / "manifest.jsonl"),
                      "--max-new-tokens", "6")
    assert results["conditions"] == ["native"]  # tiny has no Whisper decoder: noted, not an error
    assert results["notes"] and "whisper" in results["notes"][0]
    assert [s["id"] for s in results["skipped"]] == ["ghost"]
    items, rs = scored(results, "native")
    for item, r in zip(items, rs):
        assert (r["errors"], r["words"]) == M.wer_counts(item["references"][0], r["prediction"])
    m = results["metrics"]["native"]
    assert m["wer"] == pytest.approx(100 * sum(r["errors"] for r in rs) / sum(r["words"] for r in rs))
    assert m["words"] == 9 + 6  # "I think I'll go home." normalises to "i think i will go home"


def test_perplexity(tmp_path, capsys):
    results = run_cli(tmp_path, capsys, "--task", "perplexity", "--data", str(EVAL / "perplexity" / "lighthouse.txt"),
                      "--window", "96", "--stride", "48")
    m = results["metrics"]["text"]
    windows = [w["results"]["text"] for w in results["items"]]
    assert m["windows"] == len(windows) > 2
    assert m["tokens"] == sum(w["tokens"] for w in windows) == m["text_tokens"] - 1
    assert m["perplexity"] == pytest.approx(math.exp(sum(w["nll"] for w in windows) / m["tokens"]))
    assert 1 < m["perplexity"] < 10_000


def test_shapes_text_and_native_with_breakdowns(tmp_path, capsys, shapes_dir):
    results = run_cli(tmp_path, capsys, "--task", "shapes", "--data", str(shapes_dir), "--ask-by", "text,native",
                      "--max-new-tokens", "4")
    assert results["conditions"] == ["text", "native"]
    items, _ = scored(results, "text")
    for condition in ("text", "native"):
        _, rs = scored(results, condition)
        assert results["metrics"][condition]["accuracy"] == pytest.approx(mean_percent(r["correct"] for r in rs))
        by_type = results["breakdown"][condition]["question_type"]
        for qtype, numbers in by_type.items():
            picked = [r["correct"] for i, r in zip(items, rs) if i["meta"]["question_type"] == qtype]
            assert numbers["n"] == len(picked) and numbers["accuracy"] == pytest.approx(mean_percent(picked))
        pairs = results["breakdown"][condition]["pairs"]
        assert sum(v["n"] for v in pairs.values()) == len(items)
    assert all(i["audio"].endswith(".wav") for i in items)


@pytest.mark.usefixtures("espeak_ng")
def test_spoken_vqa_synthesises_questions(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path / "cache"))  # the TTS cache
    results = run_cli(tmp_path, capsys, "--task", "spoken-vqa", "--data", str(EVAL / "vqav2"), "--ask-by", "text",
                      "--ask-by", "native", "--limit", "2", "--max-new-tokens", "3")
    assert results["conditions"] == ["text", "native"] and results["n_items"] == 2
    assert list((tmp_path / "cache" / "tts").rglob("*.wav"))


def one_line_error(capsys, *args):
    try:
        code = main(["eval", *args])
    except SystemExit as exit:  # argparse's own errors (OneLineParser) leave through sys.exit
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("args, needle", [
    (["--model", "tiny", "--task", "vqav2", "--data", "/no/such/dir"], "data not found"),
    (["--model", "tiny", "--task", "nope", "--data", "x"], "invalid choice"),
    (["--model", "tiny", "--task", "vqav2", "--data", str(EVAL / "vqav2"), "--ask-by", "telepathy"], "ask-by"),
    (["--model", "tiny", "--task", "vqav2", "--data", str(EVAL / "vqav2"), "--ask-by", "transcribe"], "speech recogniser"),
    (["--model", "tiny", "--task", "vqav2", "--data", str(EVAL / "vqav2"), "--audio-mode", "native"], "--task asr"),
    (["--model", "tiny", "--task", "vqav2", "--data", str(EVAL / "vqav2"), "--limit", "0"], "positive"),
    (["--model", "tiny", "--task", "gqa", "--data", str(EVAL / "qa" / "questions.jsonl")], "not valid JSON"),
    (["--model", "nonexistent-preset", "--task", "qa", "--data", str(EVAL / "qa" / "questions.jsonl")], "unknown model"),
])
def test_bad_arguments_print_one_line_and_exit_2(capsys, args, needle):
    assert needle in one_line_error(capsys, *args)


def test_command_line_subprocess(tmp_path):
    out = tmp_path / "pope.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "omniphi.cli", "eval", "--model", "tiny", "--task", "pope",
                             "--data", str(EVAL / "pope"), "--batch-size", "3", "--max-new-tokens", "3", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("| pope (omniphi-tiny) | text |")
    assert "8/8" in result.stderr  # the progress bar reached the end
    assert json.loads(out.read_text())["n_scored"] == 8
