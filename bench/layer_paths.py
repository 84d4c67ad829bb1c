"""The two per-layer paths omniphi picks by the number of rows, each against the path it replaces,
on Phi-2's largest Linear (10240 x 2560), in one run:

- an int8 layer (omniphi.runtime.quantize) given a prefill's rows, in float32 and bfloat16: its
  weight-only kernel (ONNX Runtime's MatMulNBits on the CPU) against the two prompt paths, integer
  products (int8 activations, one scale per row, × the int8 codes, torch._int_mm) and bf16 dense (the
  int8 weight copied into a bf16 scratch matrix, one bf16 matmul, scaled), and which one the CPU probe
  picked; the int4 kernel, which prefills through MatMulNBits whatever the rows, beside a float32 Linear for scale;
- a bf16 layer (omniphi.runtime.fast_ops.FewRowLinear) given a decode step's rows: `F.linear` against
  the weight @ inputs product; several weights in turn, so that the cache does not hold the one read.

    .venv/bin/python bench/layer_paths.py [--prefill-rows 623] [--decode-rows 1,4]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.nn import functional as F

from omniphi.runtime import quantize
from omniphi.runtime.fast_ops import FewRowLinear
from omniphi.runtime.quantize import Int8WeightOnlyLinear

OUT_FEATURES, IN_FEATURES = 10240, 2560


def best_ms(run, repeats: int = 5) -> float:
    run()  # the first call pays for allocations
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill-rows", type=int, default=623)
    parser.add_argument("--decode-rows", default="1,4")
    args = parser.parse_args()
    torch.manual_seed(0)

    chosen = quantize.DENSE_PREFILL_ROWS
    for dtype in (torch.float32, torch.bfloat16):
        int8 = Int8WeightOnlyLinear(nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False), dtype)
        prompt = torch.randn(args.prefill_rows, IN_FEATURES, dtype=dtype)
        probed = int8.prefill_dtype
        times = {"kernel": best_ms(lambda: int8.kernel(prompt))}
        quantize.DENSE_PREFILL_ROWS = 1  # the other paths whatever the rows, to see where they cross
        for name, path in (("integer products", torch.int8), ("bf16 dense", torch.bfloat16)):
            int8.prefill_dtype = path
            times[name] = best_ms(lambda: int8(prompt))
        quantize.DENSE_PREFILL_ROWS = chosen
        used = {None: "kernel", torch.int8: "integer products", torch.bfloat16: "bf16 dense"}[probed]
        if args.prefill_rows < chosen:
            used = "kernel"
        print(f"int8 {str(dtype)[6:]}, {args.prefill_rows} rows: "
              + ", ".join(f"{name} {ms:.1f} ms ({times['kernel'] / ms:.2f}x the kernel)" for name, ms in times.items())
              + f"; omniphi runs {used} here (the probe's choice from {chosen} rows)")
    full = nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False)
    int4 = quantize.Int4WeightOnlyLinear(full, quantize.INT4_BLOCK)
    prompt = torch.randn(args.prefill_rows, IN_FEATURES)
    print(f"int4, {args.prefill_rows} rows: kernel {best_ms(lambda: int4(prompt)):.1f} ms, "
          f"a float32 Linear {best_ms(lambda: full(prompt)):.1f} ms")

    plain = [nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False).to(torch.bfloat16) for _ in range(8)]
    few = []
    for layer in plain:
        switched = copy.deepcopy(layer)
        switched.__class__ = FewRowLinear
        few.append(switched)
    for rows in (int(r) for r in args.decode_rows.split(",")):
        x = torch.randn(rows, IN_FEATURES, dtype=torch.bfloat16)
        linear = best_ms(lambda: [F.linear(x, layer.weight) for layer in plain]) / len(plain)
        fast = best_ms(lambda: [layer(x) for layer in few]) / len(few)
        print(f"bf16, {rows} row(s): F.linear {linear:.2f} ms, FewRowLinear {fast:.2f} ms ({linear / fast:.2f}x)")


if __name__ == "__main__":
    main()
