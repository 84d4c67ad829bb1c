"""Decode steps of a quantised Phi-2-sized LLM with its shared-input layers stacked into one kernel call
(q, k, v and fc1: `omniphi.runtime.quantize.SharedInputProjections`, what `omniphi.runtime.load` does)
against the same layers called one by one, alternating step by step in one process so that both see
the same machine state. Random weights (speed does not depend on their values), prompt as long as
the README's bench prompt, one torch thread in the steps as `DecodeBatch` runs them.

    .venv/bin/python bench/shared_projections.py [--layers 8] [--quantize int4] [--steps 30] [--rows 1]
        [--prompt 623]   (--rows 4: four sequences decoding together, as 4 concurrent streams do)
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from decode_ops import phi2_sized
from omniphi.runtime import quantize
from omniphi.runtime.decoding import new_cache
from omniphi.runtime.fast_ops import install_fast_ops


def prepared(layers: int, mode: str, shared: bool):
    model = phi2_sized(layers)
    install_fast_ops(model)
    if shared:
        quantize.quantize_language_model_(model, mode)
    else:
        with mock.patch.object(quantize, "shared_input_groups", lambda *_: []):
            quantize.quantize_language_model_(model, mode)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--quantize", default="int4", choices=["int8", "int4"])
    parser.add_argument("--prompt", type=int, default=623)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()

    runs = {}
    with torch.inference_mode():
        for shared in (False, True):
            model = prepared(args.layers, args.quantize, shared)
            cache = new_cache()
            prompt = torch.randint(0, 50000, (args.rows, args.prompt), generator=torch.Generator().manual_seed(0))
            logits = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            runs[shared] = {"model": model, "cache": cache, "token": logits[:, -1:].argmax(-1), "seconds": []}
        for _ in range(args.steps):
            for run in runs.values():
                with quantize.cores_left_to_kernels():
                    started = time.perf_counter()
                    logits = run["model"](input_ids=run["token"], past_key_values=run["cache"], use_cache=True).logits
                    run["seconds"].append(time.perf_counter() - started)
                run["token"] = logits[:, -1:].argmax(-1)
    apart, stacked = (statistics.median(runs[shared]["seconds"]) * 1e3 for shared in (False, True))
    print(f"{args.layers} layers, {args.quantize}, {args.rows} row(s), median of {args.steps} decode steps: "
          f"layers one by one {apart:.1f} ms, shared-input layers stacked {stacked:.1f} ms ({stacked / apart:.2f}x)")


if __name__ == "__main__":
    main()
