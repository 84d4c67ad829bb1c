"""The starter's replay data: the base model's own answers and prose, readable by the recipe's loaders."""

import json
from pathlib import Path

import pytest

from omniphi.starter.replay import GENERAL_QUESTIONS, write_replay
from omniphi.train.data import open_source
from omniphi.train.recipe import DataSource, load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_replay_questions_are_none_of_the_evals_questions():
    """Replay trains the starter on these; the general-question and follow-up evals must stay unseen."""
    asked = set()
    for path in [REPO / "tests/fixtures/eval/qa/questions.jsonl", *sorted((REPO / "docs/eval").glob("*.jsonl"))]:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                asked |= {record["question"].lower()} | {q.lower() for q, _ in record.get("history", [])}
    assert asked and not asked & {q.lower() for q in GENERAL_QUESTIONS}
    assert len(set(GENERAL_QUESTIONS)) == len(GENERAL_QUESTIONS)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    counts = write_replay(out, base="tiny", system_prompts=(None, "Be brief."), text_samples=5, text_tokens=8,
                          answer_tokens=6)
    return out, counts


def test_replay_files_load_as_training_data(replay):
    out, counts = replay
    chat = open_source(DataSource(format="llava", path=str(out / "chat.json")))
    text = open_source(DataSource(format="text", path=str(out / "text.jsonl")))
    assert len(chat) == counts["chat"] > 0 and len(text) == counts["text"] == 5
    sample = chat[0]
    assert [m["role"] for m in sample["messages"]][-2:] == ["user", "assistant"]
    records = json.loads((out / "chat.json").read_text())
    questions = [r["conversations"][-2]["value"] for r in records]
    assert set(questions) <= set(GENERAL_QUESTIONS)
    assert {r["conversations"][0]["value"] for r in records if r["conversations"][0]["from"] == "system"} <= {"Be brief."}
    assert all(text[i]["text"] for i in range(len(text)))


def test_the_instruct_recipe_mixes_in_the_replay():
    recipe = load_recipe(REPO / "recipes/starter-instruct.yaml")
    paths = {(s.format, s.path) for s in recipe.data.train}
    assert ("llava", "data/starter-replay/chat.json") in paths and ("text", "data/starter-replay/text.jsonl") in paths
