"""Replay data for the starter's instruct stage: what the untrained SmolLM2 itself says, so that
learning to answer questions about shapes does not cost it what it already knew.

Why: the first starter build trained its LoRA on shapes dialogues only. Its perplexity on general
text rose by half (24.8 → 37.7) and it answered "How many legs does a spider have?" with "One.",
a shapes answer. The standard cure is rehearsal: mix text of the old kind into the new training.
No general corpus ships offline, so the old model writes it (self-distillation, as in
"self-synthesised rehearsal"): samples of the base LLM are, by construction, text it already
predicts well, and training on them pulls the adapter back toward the base wherever the shapes
data does not pull elsewhere. recipes/starter-instruct.yaml also distils these files
(omniphi/train/distill.py): at each of their tokens the LoRA is pulled toward the base's whole
next-token distribution, not only toward the token it sampled.

Two files, both read by the recipe like any other data. Their size is the mix: the answers and 24
texts are a small part of recipes/starter-instruct.yaml's trained tokens (a first try with 80
answers and 240 texts made replay two thirds of them and starved the shapes answers of loss):

* ``chat.json`` (LLaVA format, no media): the base model's greedy answers to general questions
  (GENERAL_QUESTIONS; none is a question of the qa fixture), under the same system prompts as the
  shapes dialogues: keeps its chat behaviour.
* ``text.jsonl`` (``{"id", "text"}``): plain text it samples from short openings: keeps its
  distribution over ordinary prose, which is what perplexity measures.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

GENERAL_QUESTIONS = (
    "What is the largest planet in the solar system?",
    "Who wrote the play Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "How many days are there in a leap year?",
    "What is the capital of Japan?",
    "What is the capital of Italy?",
    "What is the capital of Canada?",
    "Which ocean is the largest?",
    "What gas do plants take in from the air?",
    "What is the chemical symbol for gold?",
    "How many continents are there?",
    "What is the tallest mountain in the world?",
    "Who painted the Mona Lisa?",
    "What is the square root of 81?",
    "What is 12 times 12?",
    "What is the freezing point of water in Fahrenheit?",
    "Which planet is known as the Red Planet?",
    "What language is spoken in Brazil?",
    "How many sides does a hexagon have?",
    "What do bees make?",
    "What is the longest river in Africa?",
    "Who was the first person to walk on the Moon?",
    "What is the main ingredient of guacamole?",
    "How many hours are there in a week?",
    "What is photosynthesis?",
    "Explain what a noun is.",
    "What is the difference between weather and climate?",
    "Why do leaves change colour in autumn?",
    "How does a rainbow form?",
    "What causes the seasons on Earth?",
    "Give me three tips for sleeping better.",
    "Write a short poem about the sea.",
    "Suggest a name for a pet cat.",
    "How do I boil an egg?",
    "What is a good way to learn a new language?",
    "Summarize the story of Cinderella in two sentences.",
    "What is the opposite of 'ancient'?",
    "Translate 'thank you' into French.",
    "What is a prime number?",
    "Is a tomato a fruit or a vegetable?",
    # Short everyday facts, most answered by the base in one sentence that restates the question
    # ("The capital of Kenya is Nairobi."): without them the LoRA's shapes answers ("Red.") drew the
    # first word of such answers away from the base's; none is a question of docs/eval.
    "What is the capital of Kenya?",
    "What is the capital of Greece?",
    "What is the capital of Norway?",
    "What is the capital of Peru?",
    "What is the capital of India?",
    "What is the capital of Mexico?",
    "What is the capital of Ireland?",
    "What is the capital of Argentina?",
    "How many legs does a horse have?",
    "How many legs does an insect have?",
    "How many legs does a chicken have?",
    "How many months are there in a year?",
    "How many seconds are there in a minute?",
    "How many players are on a football team?",
    "What colour is a lemon?",
    "What colour are most carrots?",
    "What colour is coal?",
    "What is the opposite of big?",
    "What is the opposite of left?",
    "What is five plus three?",
    "What is ten minus four?",
    "Which animal barks?",
    "What sound does a cat make?",
    "What do caterpillars turn into?",
    "Which star is closest to the Earth?",
    "What is the hottest planet in the solar system?",
    "What is the largest country in the world?",
    "What is the currency of Japan?",
    "Who invented the light bulb?",
    "What do we call a baby dog?",
    "Where do penguins live?",
    "What instrument has black and white keys?",
)

TEXT_OPENINGS = (
    "The history of", "In the morning,", "Scientists have found that", "Once upon a time,",
    "The city was", "Most people think", "One of the most important", "The weather in",
    "When I was young,", "The best way to", "Music has", "In the middle of the forest,",
    "The new school", "Every year,", "The old man", "It is well known that", "The river",
    "Cooking at home", "The first computers", "Children often", "The ocean", "A good book",
    "The small village", "During the winter,", "The market", "Travelling by train",
    "Many animals", "The garden", "In the year 1900,", "The museum",
)


# The mix the instruct recipe is tuned for (see the module docstring); one place for both functions below.
TEXT_SAMPLES = 24
TEXT_TOKENS = 96
ANSWER_TOKENS = 96


def write_replay(out_dir: str | Path, base: str = "starter-base", system_prompts: Sequence[str | None] = (None,),
                 text_samples: int = TEXT_SAMPLES, text_tokens: int = TEXT_TOKENS, answer_tokens: int = ANSWER_TOKENS,
                 seed: int = 0, batch_size: int = 16) -> dict[str, int]:
    """Write ``chat.json`` and ``text.jsonl`` (answers to all GENERAL_QUESTIONS, `text_samples` texts)
    from `base`'s LLM into `out_dir`, and ``metadata.json`` with what made them; returns counts."""
    from omniphi.chat import GenerationSettings
    from omniphi.runtime.assistant import Assistant

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assistant = Assistant.load(base)
    rng = random.Random(f"starter-replay:{seed}")
    systems = [rng.choice(list(system_prompts)) for _ in GENERAL_QUESTIONS]

    conversations = []
    for question, system in zip(GENERAL_QUESTIONS, systems):
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        conversations.append(messages + [{"role": "user", "content": [{"type": "text", "text": question}]}])
    greedy = GenerationSettings(max_new_tokens=answer_tokens)
    answers = []
    for start in range(0, len(conversations), batch_size):
        answers += [r.text.strip() for r in assistant.complete_batch(conversations[start:start + batch_size], greedy)]
    chat = []
    for i, (question, system, answer) in enumerate(zip(GENERAL_QUESTIONS, systems, answers)):
        if not answer:
            continue
        turns = [{"from": "system", "value": system}] if system else []
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        chat.append({"id": f"replay-chat-{i:03d}", "conversations": turns})
    (out_dir / "chat.json").write_text(json.dumps(chat, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    # Plain text at temperature 1: the model's own distribution, which perplexity scores.
    texts = sample_texts(assistant, text_samples, text_tokens, seed, 1.0, batch_size)
    write_texts(out_dir / "text.jsonl", texts, "replay-text")
    counts = {"chat": len(chat), "text": len(texts)}
    settings = replay_settings(base, system_prompts, text_samples, text_tokens, answer_tokens, seed)
    (out_dir / "metadata.json").write_text(json.dumps({**settings, **counts}, indent=1) + "\n", encoding="utf-8")
    return counts


def sample_texts(assistant, n: int, tokens: int, seed: int, temperature: float, batch_size: int = 16) -> list[str]:
    """`n` texts of up to `tokens` tokens continued by `assistant`'s LLM from TEXT_OPENINGS (in turn),
    each from its own seed so that a repeated opening gives another text."""
    from omniphi.chat import GenerationSettings

    openings = [TEXT_OPENINGS[i % len(TEXT_OPENINGS)] for i in range(n)]
    texts = []
    for start in range(0, n, batch_size):
        chunk = openings[start:start + batch_size]
        sampling = [GenerationSettings(max_new_tokens=tokens, temperature=temperature, seed=seed * 100_003 + start + i)
                    for i in range(len(chunk))]
        texts += [(opening + reply.text).strip() for opening, reply in zip(chunk, assistant.continue_texts(chunk, sampling))]
    return texts


def write_texts(path: Path, texts: Sequence[str], prefix: str) -> None:
    """`texts` as a ``{"id", "text"}`` JSON-lines file (the recipes' ``text`` format)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"{prefix}-{i:03d}", "text": text}, ensure_ascii=False) + "\n")


def replay_settings(base: str = "starter-base", system_prompts: Sequence[str | None] = (None,),
                    text_samples: int = TEXT_SAMPLES, text_tokens: int = TEXT_TOKENS,
                    answer_tokens: int = ANSWER_TOKENS, seed: int = 0) -> dict:
    """What a replay directory was made from (its metadata.json), so a build can tell a stale one."""
    return {"base": base, "questions": list(GENERAL_QUESTIONS), "system_prompts": list(system_prompts),
            "text_openings": list(TEXT_OPENINGS), "text_samples": text_samples, "text_tokens": text_tokens,
            "answer_tokens": answer_tokens, "seed": seed}
