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
    for path in [root / "tests/fixtures/eval/qa/questions.jsonl", *sorted((root / "docs/eval").glob("*.jsonl"))]:
        for line in path.read_text().splitlines():
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
    n = conversations.write_spoken_chat(tmp_path, make_speaker(cache_dir=tmp_path / "tts"), hard_fraction=0.5, voices=3)
    spoken = json.loads((tmp_path / "spoken_chat.json").read_text())
    assert n == 6 and [r["id"] for r in spoken] == ["c0-v0", "c0-v1", "c0-v2", "f0-v0", "f0-v1", "f0-v2"]
    assert spoken[0]["conversations"][0]["value"] == "<audio>" and spoken[0]["spoken_text"] == "What is the capital of Japan?"
    assert [t["value"] for t in spoken[4]["conversations"][2:]] == ["12.", "And if I double that?", "24."]
    assert len({r["audio"] for r in spoken}) > 2  # copies are other voices (or hard versions), not one clip
    for record in spoken:
        assert len(media.load_audio(tmp_path / record["audio"])) > 8000


def test_general_sentences_are_the_questions_and_the_speakable_sentences_of_the_base(tmp_path):
    from omniphi.starter.replay import GENERAL_QUESTIONS

    chat = [{"id": "c0", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value":
            "The capital of Japan is Tokyo. It has 14 million people. **Tokyo** is big! Yes."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    (tmp_path / "followups.json").write_text("[]")
    (tmp_path / "text.jsonl").write_text(json.dumps({"id": "t0", "text": "Once upon a time,\nthere was a river. "
                                                                        "It ran to the sea."}) + "\n")
    sentences = conversations.general_sentences(tmp_path)
    assert sentences[:len(GENERAL_QUESTIONS)] == list(GENERAL_QUESTIONS)
    assert {q for chain in conversations.FOLLOW_UPS for q in chain} <= set(sentences)
    prose = sentences[len(set(GENERAL_QUESTIONS) | {q for c in conversations.FOLLOW_UPS for q in c}):]
    # digits and markdown are read otherwise than written; one-word sentences teach no words
    assert prose == ["The capital of Japan is Tokyo.", "Once upon a time, there was a river.", "It ran to the sea."]
    assert len(sentences) == len(set(sentences))


@pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None, reason="needs flite and espeak-ng")
def test_general_speech_is_an_asr_manifest_of_the_sentences_spoken_by_several_voices(tmp_path, monkeypatch):
    from omniphi import media
    from omniphi.data.speech import AsrManifestDataset
    from omniphi.data.tts import make_speaker

    monkeypatch.setattr(conversations, "general_sentences", lambda out: ["What do bees make?", "The river ran to the sea."])
    n = conversations.write_general_speech(tmp_path, make_speaker(cache_dir=tmp_path / "tts"), hard_fraction=0.5, voices=2)
    rows = [json.loads(line) for line in (tmp_path / "speech_asr.jsonl").read_text().splitlines()]
    assert n == len(rows) == 4
    assert [r["text"] for r in rows] == ["What do bees make?"] * 2 + ["The river ran to the sea."] * 2
    for row in rows:
        assert len(media.load_audio(tmp_path / row["audio"])) > 8000
    manifest = AsrManifestDataset(tmp_path / "speech_asr.jsonl")  # what the audio recipes read
    assert len(manifest) == 4 and manifest[0]["messages"][-1]["content"][0]["text"] == "What do bees make?"
