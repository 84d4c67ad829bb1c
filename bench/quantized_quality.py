"""Does a weight format keep the starter's answers? Each format against float32, in one run.

On the 24 held-out shapes questions of tests/fixtures/starter-shapes (typed, greedy, 8 new tokens):
how many answers equal float32's, how many are right, and how the next-token logits of each prompt
compare with float32's (largest absolute difference, cosine similarity):

    nice -n 10 .venv/bin/python bench/quantized_quality.py [--model starter] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from omniphi.chat import GenerationSettings
from omniphi.data.shapes import answer_matches
from omniphi.runtime.assistant import Assistant

SHAPES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "starter-shapes"
CONFIGS = [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("float32", "int4"), ("bfloat16", "int8")]


def conversation(question: dict) -> list[dict]:
    image = Image.open(SHAPES / question["image"])
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question["question"]}]}]


def next_token_logits(assistant: Assistant, question: dict) -> torch.Tensor:
    sample = assistant.processor.encode(conversation(question), add_generation_prompt=True, with_labels=False)
    batch = assistant.processor.collate([sample])
    with torch.inference_mode():
        return assistant.model(**batch).logits[0, -1].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="starter")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    questions = json.loads((SHAPES / "questions.json").read_text())["questions"]
    settings = GenerationSettings(max_new_tokens=8)
    reference_answers = reference_logits = None
    for dtype, quantize in CONFIGS:
        assistant = Assistant.load(args.model, device="cpu", dtype=dtype, quantize=quantize)
        answers = [assistant.complete(conversation(q), settings).text for q in questions]
        logits = [next_token_logits(assistant, q) for q in questions]
        if reference_answers is None:
            reference_answers, reference_logits = answers, logits
        row = {
            "config": f"{dtype}+{quantize}",
            "same_answer_as_float32": sum(a == b for a, b in zip(answers, reference_answers)),
            "right": sum(answer_matches(a, q["answer"]) for a, q in zip(answers, questions)),
            "questions": len(questions),
            "logits_max_abs_diff": max((a - b).abs().max().item() for a, b in zip(logits, reference_logits)),
            "logits_min_cosine": min(torch.cosine_similarity(a, b, dim=0).item() for a, b in zip(logits, reference_logits)),
            "same_next_token": sum(int(a.argmax() == b.argmax()) for a, b in zip(logits, reference_logits)),
        }
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['config']:18s} same answer as fp32 {row['same_answer_as_float32']}/{row['questions']}, "
                  f"right {row['right']}/{row['questions']}, next token same {row['same_next_token']}/{row['questions']}, "
                  f"logits max |diff| {row['logits_max_abs_diff']:.3f}, min cosine {row['logits_min_cosine']:.5f}",
                  flush=True)
        del assistant


if __name__ == "__main__":
    main()
