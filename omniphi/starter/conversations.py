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
  questions, each spoken by several voices of the build's mix (a part of them made hard by
  omniphi/data/augment.py), with the base's answers to the typed question: the native path learns
  that a spoken question means what the typed one means. Against ~2,000 spoken shapes questions,
  one clip per general question (64) was too few: every clip without a picture still got shapes talk.
* ``speech_texts.jsonl`` + ``speech_asr.jsonl``: more prose sampled from the base, and an ASR
  manifest of general sentences (the general and follow-up questions, and the sentences of the
  base's own answers and prose), spoken, for the audio stages. Why: those stages had heard only the
  shapes questions' few dozen words, so the audio projector wrote any other speech as shapes words
  ("What is the capital of France?" reached the LLM as colour talk); with a few hundred sentences
  it became "the capital of the United States": the words it can write grow with the words it heard.

None of these chains or questions is in the eval's follow-up or general-question files
(docs/eval/follow-ups.jsonl, tests/fixtures/eval/qa).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
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


SPOKEN_VOICES_PER_QUESTION = 4
SPEECH_VOICES_PER_SENTENCE = 2
SPEECH_TEXTS, SPEECH_TEXT_TOKENS = 192, 64
# Sentences the TTS engines read as written and the audio stages can spell: words and plain
# punctuation only (digits, symbols and markdown are read differently from how they are written).
_SPEAKABLE = re.compile(r"[A-Z][A-Za-z ,.'?!-]+[.?!]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def write_spoken_chat(out_dir: str | Path, speaker, hard_fraction: float = 0.3, seed: int = 0,
                      voices: int = SPOKEN_VOICES_PER_QUESTION) -> int:
    """``spoken_chat.json``: replay's chat.json and followups.json with their first question
    spoken by `speaker` (a tts.Speaker or VoiceMix), `voices` times each (the voice is drawn per
    copy); `hard_fraction` of the clips augmented. Returns the number of records."""
    out_dir = Path(out_dir)
    records = []
    for name in ("chat.json", "followups.json"):
        for record in json.loads((out_dir / name).read_text(encoding="utf-8")):
            records += [{**record, "id": f"{record['id']}-v{k}"} for k in range(voices)]
    from omniphi.data.tts import spoken_records

    spoken, _ = spoken_records(records, speaker, out_dir / "spoken", relative_to=out_dir, jobs=2)
    for record in spoken:
        record["audio"], effects = _maybe_hard(out_dir, record["audio"], f"spoken-chat:{seed}:{record['id']}", hard_fraction)
        if effects:
            record["augmented"] = effects
    (out_dir / "spoken_chat.json").write_text(json.dumps(spoken, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(spoken)


def write_speech_texts(out_dir: str | Path, base: str = "starter-base", seed: int = 0, n: int = SPEECH_TEXTS,
                       tokens: int = SPEECH_TEXT_TOKENS) -> int:
    """``speech_texts.jsonl``: `n` more texts of the base's prose, only for their words (spoken by
    write_general_speech, never trained as text: replay's text.jsonl is the mix the recipe is tuned
    for). Sampled at 0.8, a little below the model's own temperature, for fewer invented words."""
    from omniphi.runtime.assistant import Assistant
    from omniphi.starter.replay import sample_texts, write_texts

    texts = sample_texts(Assistant.load(base), n, tokens, seed=seed + 1, temperature=0.8)
    write_texts(Path(out_dir) / "speech_texts.jsonl", texts, "speech-text")
    return len(texts)


def general_sentences(out_dir: str | Path) -> list[str]:
    """The general and follow-up questions, then the speakable sentences (3-24 words) of the
    base's answers and prose in `out_dir` (chat.json, followups.json, text.jsonl and, where
    written, speech_texts.jsonl), without repeats."""
    from omniphi.starter.replay import GENERAL_QUESTIONS

    out_dir = Path(out_dir)
    sentences = list(GENERAL_QUESTIONS) + [q for chain in FOLLOW_UPS for q in chain]
    passages = [turn["value"] for name in ("chat.json", "followups.json")
                for record in json.loads((out_dir / name).read_text(encoding="utf-8"))
                for turn in record["conversations"] if turn["from"] == "gpt"]
    for name in ("text.jsonl", "speech_texts.jsonl"):
        if (out_dir / name).is_file():
            passages += [json.loads(line)["text"] for line in (out_dir / name).read_text(encoding="utf-8").splitlines()
                         if line.strip()]
    for passage in passages:
        for sentence in _SENTENCE_END.split(" ".join(passage.split())):
            if _SPEAKABLE.fullmatch(sentence) and 3 <= len(sentence.split()) <= 24:
                sentences.append(sentence)
    return list(dict.fromkeys(sentences))


def write_general_speech(out_dir: str | Path, speaker, hard_fraction: float = 0.3, seed: int = 0,
                         voices: int = SPEECH_VOICES_PER_SENTENCE) -> int:
    """``speech_asr.jsonl`` in `out_dir`: each of general_sentences() spoken `voices` times (the
    voice drawn per copy, clips under ``speech/``), `hard_fraction` of them augmented; the
    ``asr_manifest`` format the audio stages read. Returns the number of clips."""
    from omniphi.data.tts import spoken_records

    out_dir = Path(out_dir)
    records = [{"id": f"speech-{i:04d}-v{k}", "conversations": [{"from": "human", "value": sentence},
                                                                 {"from": "gpt", "value": sentence}]}
               for i, sentence in enumerate(general_sentences(out_dir)) for k in range(voices)]
    spoken, _ = spoken_records(records, speaker, out_dir / "speech", relative_to=out_dir, jobs=2)
    with open(out_dir / "speech_asr.jsonl", "w", encoding="utf-8") as f:
        for record in spoken:
            audio, _ = _maybe_hard(out_dir, record["audio"], f"general-speech:{seed}:{record['id']}", hard_fraction)
            f.write(json.dumps({"id": record["id"], "audio": audio, "text": record["spoken_text"]}, ensure_ascii=False) + "\n")
    return len(spoken)


def _maybe_hard(out_dir: Path, clip: str, key: str, hard_fraction: float) -> tuple[str, list | None]:
    """`clip` (relative to `out_dir`), or with probability `hard_fraction` (seeded by `key`) an
    augmented copy of it next to it; with the effects applied (None: none)."""
    from omniphi import media
    from omniphi.data.augment import augment
    from omniphi.data.tts import _write_wav

    rng = random.Random(key)
    if rng.random() >= hard_fraction:
        return clip, None
    audio, effects = augment(media.load_audio(out_dir / clip), rng)
    rel = f"{Path(clip).parent}/hard-{hashlib.sha256(key.encode()).hexdigest()[:20]}.wav"
    _write_wav(out_dir / rel, audio)
    return rel, effects
