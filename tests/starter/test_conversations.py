"""The conversations step of `make starter`: follow-up chains answered with their whole history,
and general questions spoken (omniphi/starter/conversations.py)."""

import json
import shutil

import pytest

from omniphi.starter import conversations


def test_follow_ups_are_answered_with_the_earlier_turns_in_the_prompt(monkeypatch, tmp_path):
    prompts = []

    def fake_answers(assistant, batch, max_new_tokens):
        prompts.extend(json.loads(json.dumps(c)) for c in batch)
        return [f"answer to: {c[-1]['content']}" for c in batch]

    from omniphi.eval import runner
    from omniphi.runtime import assistant

    monkeypatch.setattr(runner, "generate_answers", fake_answers)
    monkeypatch.setattr(assistant.Assistant, "load", classmethod(lambda cls, spec: None))
    n = conversations.write_followups(tmp_path, system_prompts=(None, "Be brief."), seed=0)
    records = json.loads((tmp_path / "followups.json").read_text())
    assert n == len(records) == len(conversations.FOLLOW_UPS)
    for record, chain in zip(records, conversations.FOLLOW_UPS):
        turns = [t for t in record["conversations"] if t["from"] != "system"]
        assert [t["value"] for t in turns[::2]] == list(chain)
        assert [t["value"] for t in turns[1::2]] == [f"answer to: {q}" for q in chain]
    # the second question of a chain was asked after the first question and its answer
    japan = next(p for p in prompts if p[-1]["content"] == "And of Italy?")
    assert [m["content"] for m in japan if m["role"] != "system"] == [
        "What is the capital of Japan?", "answer to: What is the capital of Japan?", "And of Italy?"]
    assert {t["value"] for r in records for t in r["conversations"] if t["from"] == "system"} == {"Be brief."}


def test_no_follow_up_or_question_of_the_eval_is_trained_on():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    asked = {q for chain in conversations.FOLLOW_UPS for q in chain}
    for name in ("docs/eval/follow-ups.jsonl", "docs/eval/general-qa.jsonl", "tests/fixtures/eval/qa/questions.jsonl"):
        for line in (root / name).read_text().splitlines():
            row = json.loads(line)
            assert row["question"] not in asked
            assert not any(q in asked for q, _ in row.get("history", []))


@pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None, reason="needs flite and espeak-ng")
def test_spoken_chat_speaks_the_first_question_and_keeps_the_answers(tmp_path):
    from omniphi import media
    from omniphi.data.tts import make_speaker

    chat = [{"id": "c0", "conversations": [{"from": "human", "value": "What is the capital of Japan?"},
                                           {"from": "gpt", "value": "The capital of Japan is Tokyo."}]}]
    follow = [{"id": "f0", "conversations": [{"from": "system", "value": "Be brief."},
                                             {"from": "human", "value": "What is 7 plus 5?"},
                                             {"from": "gpt", "value": "12."},
                                             {"from": "human", "value": "And if I double that?"},
                                             {"from": "gpt", "value": "24."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    (tmp_path / "followups.json").write_text(json.dumps(follow))
    n = conversations.write_spoken_chat(tmp_path, make_speaker(cache_dir=tmp_path / "tts"), hard_fraction=0.5)
    spoken = json.loads((tmp_path / "spoken_chat.json").read_text())
    assert n == 2 and [r["id"] for r in spoken] == ["c0", "f0"]
    assert spoken[0]["conversations"][0]["value"] == "<audio>" and spoken[0]["spoken_text"] == "What is the capital of Japan?"
    assert [t["value"] for t in spoken[1]["conversations"][2:]] == ["12.", "And if I double that?", "24."]
    for record in spoken:
        assert len(media.load_audio(tmp_path / record["audio"])) > 8000
