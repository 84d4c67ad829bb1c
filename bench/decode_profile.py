"""Where a decode step's time goes: torch.profiler over a few batch-1 decode steps of a random
Phi-2-sized LLM (bench/decode_ops.py's model) as `omniphi.runtime.load` prepares it (fast_ops,
the growing key/value cache, quantised layers), after a prompt as long as the README's bench prompt.

torch's profiler sees only torch's ops: the time of quantised layers on the CPU (ONNX Runtime calls)
is the step's time minus the ops listed, printed as "outside torch's ops".

    .venv/bin/python bench/decode_profile.py [--layers 8] [--dtype float32] [--quantize int8] [--prompt 623]
        [--all-threads]   (a quantised model's steps on every torch thread, not one as DecodeBatch runs them)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.profiler import profile

from decode_ops import phi2_sized
from omniphi.runtime.decoding import new_cache
from omniphi.runtime.fast_ops import install_fast_ops
from omniphi.runtime.quantize import QUANTIZATIONS, cores_left_to_kernels, quantize_language_model_, runs_cpu_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS)
    parser.add_argument("--prompt", type=int, default=623)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--all-threads", action="store_true")
    args = parser.parse_args()

    model = phi2_sized(args.layers).to(getattr(torch, args.dtype))
    install_fast_ops(model)
    quantize_language_model_(model, args.quantize)
    with torch.inference_mode():
        cache = new_cache()
        logits = model(input_ids=torch.randint(0, 50000, (1, args.prompt)), past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits

        one_thread = runs_cpu_kernels(model) and not args.all_threads

        def step():
            nonlocal logits
            with cores_left_to_kernels() if one_thread else contextlib.nullcontext():
                logits = model(input_ids=logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True).logits

        seconds = []
        for _ in range(args.steps):
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
        with profile() as profiler:
            for _ in range(args.steps):
                step()
    step_ms = statistics.median(seconds) * 1e3
    threads = "one torch thread" if one_thread else f"{torch.get_num_threads()} torch threads"
    print(f"{args.layers} layers, {args.dtype}, quantize {args.quantize}, {threads}: decode step {step_ms:.1f} ms "
          f"(median of {args.steps})")
    events = profiler.key_averages()
    torch_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    print(f"outside torch's ops (ONNX Runtime calls, Python): {max(step_ms - torch_ms, 0):.1f} ms per step")
    print(events.table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
