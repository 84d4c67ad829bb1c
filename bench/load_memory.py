"""Resident memory of a model as `omniphi.runtime.load` gives it, in a fresh process (Linux: /proc):

    .venv/bin/python bench/load_memory.py --model phi2-random --dtype float32 --quantize int8

Prints the resident set after loading and its peak during loading (quantising starts from the
full-precision weights, so the peak is at least the float32 or bf16 model's size), then after
answering one image + question (`omniphi bench`'s first turn, 8 tokens): what a server holds once it
has served a long prompt (its key/values in the prefix cache included, about 0.2 GB for Phi-2).
"""

from __future__ import annotations

import argparse
import resource

from omniphi import bench
from omniphi.chat import GenerationSettings
from omniphi.runtime.assistant import Assistant
from omniphi.runtime.loading import load
from omniphi.runtime.quantize import QUANTIZATIONS


def resident_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="phi2-random")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS)
    args = parser.parse_args()
    loaded = load(args.model, device="cpu", dtype=args.dtype, quantize=args.quantize)  # kept alive while measured
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{args.model} {args.dtype} quantize {args.quantize}: resident {resident_gib():.1f} GiB after loading, "
          f"peak {peak:.1f} GiB")
    Assistant(loaded).complete(bench.first_turn(), GenerationSettings(max_new_tokens=8), ignore_eos=True)
    print(f"resident {resident_gib():.1f} GiB after answering one image + question")
    del loaded


if __name__ == "__main__":
    main()
