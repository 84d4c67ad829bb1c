"""More replay for the starter's instruct stage: follow-up dialogues and spoken general questions,
all answered by the untrained SmolLM2 itself (as omniphi/starter/replay.py does for single questions).

Why: trained on shapes dialogues, the starter answered "And of Germany?" after the capital of
France with "Germany." (the base says "The capital of Germany is Berlin."): it had learned to
answer in one word and to drop the context. And asked "What is the capital of France?" by voice in
native mode it said "Yes.": its audio path had only ever heard questions about shapes.

* ``followups.json``: chains of two or three questions where each later one only makes sense with
  the earlier turns ("What is the capital of Japan?" → "And of Italy?"), each answer the base
  model's own greedy answer given the whole history, so the LoRA keeps its context and its sentences.
* ``spoken_chat.json`` + ``spoken/``: replay's general questions and the follow-ups' first
  questions spoken (the build's voice mix, a part of them made hard by omniphi/data/augment.py),
  with the base's answers to the typed question: the native path learns that a spoken question
  means what the typed one means.

None of these chains or questions is in the eval's follow-up or general-question files
(docs/eval/follow-ups.jsonl, tests/fixtures/eval/qa).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

FOLLOW_UPS: tuple[tuple[str, ...], ...] = (
    ("What is the capital of Japan?", "And of Italy?"),
    ("What is the capital of Canada?", "And of Australia?", "Which of the two is further north?"),
    ("How many legs does a cat have?", "And a bird?"),
    ("Who wrote Romeo and Juliet?", "What else did he write?"),
    ("What is 7 plus 5?", "And if I double that?"),
    ("What colour is grass?", "And snow?"),
    ("What is the largest planet in the solar system?", "And the smallest?"),
    ("What language is spoken in Brazil?", "And in Mexico?"),
    ("What is the boiling point of water in Celsius?", "And in Fahrenheit?"),
    ("Name a fruit that is yellow.", "And one that is red?"),
    ("What do bees make?", "Why do they make it?"),
    ("Which ocean is the largest?", "And the second largest?"),
    ("What is the chemical symbol for gold?", "And for silver?"),
    ("How many hours are in a day?", "And minutes in an hour?"),
    ("What is the tallest animal?", "How tall can it be?"),
    ("Who painted the Mona Lisa?", "Where is it kept?"),
    ("What is the capital of Egypt?", "What river flows through it?"),
    ("What is a triangle?", "And a square?"),
    ("Suggest a name for a dog.", "Another one, please."),
    ("What is the opposite of hot?", "And of fast?"),
    ("What is the freezing point of water in Celsius?", "And its boiling point?"),
    ("How many continents are there?", "Which is the largest?"),
    ("What is the main ingredient of bread?", "And of guacamole?"),
    ("Who was the first person to walk on the Moon?", "In which year?"),
)
FOLLOW_UP_ANSWER_TOKENS = 96


def write_followups(out_dir: str | Path, base: str = "starter-base", system_prompts: Sequence[str | None] = (None,),
                    seed: int = 0, answer_tokens: int = FOLLOW_UP_ANSWER_TOKENS) -> int:
    """``followups.json`` in `out_dir`: each chain of FOLLOW_UPS answered turn by turn by `base`
    (greedy, the whole history in the prompt). Returns the number of dialogues."""
    from omniphi.eval.runner import generate_answers
    from omniphi.runtime.assistant import Assistant

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assistant = Assistant.load(base)
    rng = random.Random(f"starter-followups:{seed}")
    histories = []
    for _ in FOLLOW_UPS:
        system = rng.choice(list(system_prompts))
        histories.append([{"role": "system", "content": system}] if system else [])
    for turn in range(max(len(chain) for chain in FOLLOW_UPS)):  # all chains' n-th turns in one batch
        active = [i for i, chain in enumerate(FOLLOW_UPS) if turn < len(chain)]
        for i in active:
            histories[i].append({"role": "user", "content": FOLLOW_UPS[i][turn]})
        answers = generate_answers(assistant, [histories[i] for i in active], answer_tokens)
        for i, answer in zip(active, answers):
            histories[i].append({"role": "assistant", "content": answer or ""})
    records = []
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    for i, history in enumerate(histories):
        if any(m["role"] == "assistant" and not m["content"] for m in history):
            continue  # a prompt over the context: leave the chain out rather than train an empty answer
        records.append({"id": f"followup-{i:03d}", "conversations": [
            {"from": roles[m["role"]], "value": m["content"]} for m in history]})
    (out_dir / "followups.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(records)


def write_spoken_chat(out_dir: str | Path, speaker, hard_fraction: float = 0.3, seed: int = 0) -> int:
    """``spoken_chat.json``: replay's chat.json and followups.json with their first question
    spoken by `speaker` (a tts.Speaker or VoiceMix); `hard_fraction` of the clips augmented.
    Returns the number of records."""
    from omniphi import media
    from omniphi.data.augment import augment
    from omniphi.data.tts import _write_wav, spoken_records

    out_dir = Path(out_dir)
    records = []
    for name in ("chat.json", "followups.json"):
        records += json.loads((out_dir / name).read_text(encoding="utf-8"))
    spoken, _ = spoken_records(records, speaker, out_dir / "spoken", relative_to=out_dir, jobs=2)
    for record in spoken:
        rng = random.Random(f"spoken-chat:{seed}:{record['id']}")
        if rng.random() < hard_fraction:
            audio, effects = augment(media.load_audio(out_dir / record["audio"]), rng)
            rel = f"spoken/hard-{record['id']}.wav"
            _write_wav(out_dir / rel, audio)
            record["audio"], record["augmented"] = rel, effects
    (out_dir / "spoken_chat.json").write_text(json.dumps(spoken, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(spoken)
