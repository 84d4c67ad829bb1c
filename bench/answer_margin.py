"""How firmly models hold a greedy answer: for one question (encoded as the model is served it, its
chat template's default system prompt included), the log-probability of each candidate answer's first token and
of the whole answer. Greedy decoding follows the first token alone, so an answer whose first token
wins by a few tenths of a nat can flip between two builds of the same recipe even when the whole
answer stays far likelier than the text that replaces it.

    .venv/bin/python bench/answer_margin.py starter-base starter runs/starter/weights \\
        --question "What is the capital of France?" \\
        --answer "The capital of France is Paris." --answer "L'Alma, la France"

One JSON line per model: {"model", "answers": {answer: {"first_token", "whole"}}}.
"""

from __future__ import annotations

import argparse
import json

from omniphi.runtime.assistant import Assistant


def answer_logprobs(assistant: Assistant, question: str, answers: list[str]) -> dict[str, dict[str, float]]:
    processor = assistant.processor
    prompt_ids = processor.encode([{"role": "user", "content": question}], add_generation_prompt=True,
                                  with_labels=False).input_ids.tolist()
    result = {}
    for answer in answers:
        answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        # token_logprobs gives log p(token j | tokens before j) for j >= 1: the answer's start at len(prompt) - 1
        logprobs = assistant.token_logprobs(prompt_ids + answer_ids)[len(prompt_ids) - 1:]
        result[answer] = {"first_token": round(logprobs[0].item(), 3), "whole": round(logprobs.sum().item(), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="presets or model directories")
    parser.add_argument("--question", required=True)
    parser.add_argument("--answer", action="append", required=True, help="a candidate answer (repeat)")
    args = parser.parse_args()
    for spec in args.models:
        assistant = Assistant.load(spec)
        print(json.dumps({"model": spec, "answers": answer_logprobs(assistant, args.question, args.answer)}), flush=True)


if __name__ == "__main__":
    main()
