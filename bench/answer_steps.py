"""The time of each decode step of one answer through the Assistant, as the server runs it, the last
step included (it retires the answer: its key/values go to the prefix cache). One image + the bench's
question, `--new-tokens` tokens, EOS ignored; two answers (a warm-up, then the one measured), each printed.

    .venv/bin/python bench/answer_steps.py [--model phi2-random] [--dtype float32] [--quantize int8]
"""

from __future__ import annotations

import argparse
import time

from omniphi import bench, runtime
from omniphi.chat import GenerationSettings
from omniphi.runtime.assistant import Assistant
from omniphi.runtime.quantize import QUANTIZATIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="phi2-random")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantize", default="int8", choices=QUANTIZATIONS)
    parser.add_argument("--new-tokens", type=int, default=12)
    args = parser.parse_args()

    assistant = Assistant(runtime.load(args.model, device="cpu", dtype=args.dtype, quantize=args.quantize))
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    for answer in ("warm-up", "measured"):
        sequence = assistant.begin(bench.first_turn(bench.QUESTION + f" ({answer})"), settings, ignore_eos=True)
        assistant.prefill(sequence)
        batch = assistant.new_batch()
        batch.add(sequence)
        steps = []
        while len(batch):
            started = time.perf_counter()
            batch.step()
            steps.append((time.perf_counter() - started) * 1e3)
        print(f"{answer}: {args.model} {args.dtype} + {args.quantize}: decode steps (ms) {' '.join(f'{s:.0f}' for s in steps)}; "
              f"the last (it retires the answer) {steps[-1]:.0f} ms")


if __name__ == "__main__":
    main()
