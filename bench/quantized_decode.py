"""Which weight-only quantisation reaches the memory-bandwidth bound for batch-1 decode on this CPU?

Decode reads every LLM weight once per token, so its speed bound is bandwidth / weight bytes. This
runs a batch-1 activation through the Linear layers of a few Phi-2-sized decoder layers (hidden
2560, intermediate 10240: q, k, v, dense, fc1, fc2) in each weight format and library, and prints
tokens/s for those layers, the bound for those bytes, and the ratios (against the bound and against
fp32), all measured in one run:

    nice -n 10 .venv/bin/python bench/quantized_decode.py [--layers 4] [--json]

Libraries: plain torch (fp32/bf16 Linear), omniphi's own path (`omniphi.runtime.quantize`, the one
`--quantize` uses: ONNX Runtime's MatMulNBits on the CPU), torch's own int8/int4 weight-only kernels
(what torchao's weight-only configs wrap) and its int8 × int8 product (`_int_mm`), torchao's int8
weight-only config (eager, as a server runs it), and bitsandbytes' CPU 8-bit and 4-bit Linear layers. A library that fails to run here is
reported, not hidden.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from omniphi.runtime import quantize as omniphi_quantize

HIDDEN, INTERMEDIATE = 2560, 10240  # Phi-2


class PhiLayerLinears(nn.Module):
    """The Linear layers of one Phi-2 decoder layer, run in decode order on one token."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.fc1 = nn.Linear(HIDDEN, INTERMEDIATE)
        self.fc2 = nn.Linear(INTERMEDIATE, HIDDEN)

    def forward(self, x):
        v = self.v_proj(x) + self.q_proj(x) + self.k_proj(x)
        h = self.dense(v)
        return x + h + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of reading a tensor much larger than the caches (what decode does with weights)."""
    data = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    data.sum()
    best = min(_timed(lambda: data.sum()) for _ in range(repeats))
    return data.numel() * 4 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes(model: nn.Module) -> int:
    """Bytes decode reads per token: every tensor the layers hold (weights, scales, zeros, biases)."""
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        total += _storage_bytes(tensor)
    return total


def _storage_bytes(tensor) -> int:
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None:  # a tensor subclass (torchao): count its inner tensors
        names, _ = tensor.__tensor_flatten__()
        return sum(_storage_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def tokens_per_second(model: nn.Module, dtype: torch.dtype, steps: int) -> float:
    x = torch.randn(1, 1, HIDDEN).to(dtype)
    best = float("inf")  # best of 3 rounds: other processes on a shared machine only ever slow a round down
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(steps):
                model(x)
            best = min(best, time.perf_counter() - start)
    return steps / best


class TorchInt8Linear(nn.Module):
    """torch's int8 weight-only kernel: int8 weights, one scale per output row, bf16 activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1) / 127
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", linear.bias.detach().to(torch.bfloat16))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return (torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scale) + self.bias).reshape(
            *x.shape[:-1], -1)


class TorchIntMMLinear(nn.Module):
    """int8 × int8 products (`torch._int_mm`, what omniphi's int8 layers prefill with where the CPU probe
    finds them fast): the activation rounded to int8 with one scale per row, the weight's codes signed."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1) / 127
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", linear.bias.detach().float())

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1]).float()
        row_scale = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        rounded = (flat / row_scale).round_().to(torch.int8)
        y = torch._int_mm(rounded, self.weight.t()).float() * row_scale * self.scale + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


class TorchInt4Linear(nn.Module):
    """torch's CPU int4 kernel: groups of 128 inputs with a bf16 scale and zero each (tinygemm's layout)."""

    def __init__(self, linear: nn.Linear, group: int = 128):
        super().__init__()
        q, scales_and_zeros = omniphi_quantize.tinygemm_int4(linear.weight.detach(), group)
        self.group = group
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("bias", linear.bias.detach().to(torch.bfloat16))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group, self.scales_and_zeros)
        return (y + self.bias).reshape(*x.shape[:-1], -1)


def configurations(base: nn.Module):
    """(name, build) pairs; build returns (model, activation dtype)."""

    def plain(dtype):
        return lambda: (copy.deepcopy(base).to(dtype), dtype)

    def omniphi(mode):
        def build():
            model = copy.deepcopy(base).to(torch.bfloat16)
            omniphi_quantize.quantize_linear_layers_(model, mode)
            return model, torch.bfloat16
        return build

    def torch_kernel(layer_class):
        def build():
            model = copy.deepcopy(base).to(torch.bfloat16)
            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    if type(child) is nn.Linear:
                        setattr(parent, name, layer_class(child))
            return model, torch.bfloat16
        return build

    def torchao_int8():
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        model = copy.deepcopy(base).to(torch.bfloat16)
        quantize_(model, Int8WeightOnlyConfig())
        return model, torch.bfloat16

    def bitsandbytes(bits):
        def build():
            import bitsandbytes as bnb

            model = copy.deepcopy(base)
            linears = [(parent, name, child) for parent in model.modules()
                       for name, child in parent.named_children() if type(child) is nn.Linear]
            for parent, name, child in linears:
                if bits == 8:
                    layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, has_fp16_weights=False)
                    layer.weight = bnb.nn.Int8Params(child.weight.data.clone(), requires_grad=False,
                                                     has_fp16_weights=False)
                else:
                    layer = bnb.nn.Linear4bit(child.in_features, child.out_features, compute_dtype=torch.bfloat16,
                                              quant_type="nf4")
                    layer.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False,
                                                     quant_type="nf4")
                layer.bias = child.bias
                setattr(parent, name, layer.to("cpu"))
            return model.to(torch.bfloat16), torch.bfloat16
        return build

    return [
        ("fp32 (torch)", plain(torch.float32)),
        ("bf16 (torch)", plain(torch.bfloat16)),
        ("int8 (omniphi: ONNX Runtime MatMulNBits)", omniphi("int8")),
        ("int4 (omniphi: ONNX Runtime MatMulNBits)", omniphi("int4")),
        ("int8 (torch _weight_int8pack_mm)", torch_kernel(TorchInt8Linear)),
        ("int4 (torch _weight_int4pack_mm_for_cpu)", torch_kernel(TorchInt4Linear)),
        ("int8 x int8 (torch _int_mm, activations per row)", torch_kernel(TorchIntMMLinear)),
        ("int8 (torchao Int8WeightOnlyConfig, eager)", torchao_int8),
        ("int8 (bitsandbytes Linear8bitLt)", bitsandbytes(8)),
        ("nf4 (bitsandbytes Linear4bit)", bitsandbytes(4)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="Phi-2 decoder layers' Linears (Phi-2 has 32)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", action="append", help="run only configurations whose name contains this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = nn.Sequential(*(PhiLayerLinears() for _ in range(args.layers))).eval().requires_grad_(False)
    bandwidth = read_bandwidth()
    rows = []
    fp32_rate = None
    for name, build in configurations(base):
        if args.only and not any(o in name for o in args.only):
            continue
        try:
            model, dtype = build()
            rate = tokens_per_second(model, dtype, args.steps)
            size = weight_bytes(model)
            row = {"config": name, "tok_s": rate, "bound_tok_s": bandwidth / size, "weight_mib": size / 2**20}
            row["of_bound"] = rate / row["bound_tok_s"]
            if name.startswith("fp32"):
                fp32_rate = rate
            row["vs_fp32"] = rate / fp32_rate if fp32_rate else None
            del model
        except Exception as error:  # noqa: BLE001 — a library that cannot run here is a result
            row = {"config": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
        rows.append(row)
        if args.json:
            print(json.dumps(row))
        elif "error" in row:
            print(f"{name:52s} failed: {row['error']}")
        else:
            versus = f"{row['vs_fp32']:.2f}x fp32" if row["vs_fp32"] else "(no fp32 row)"  # --only without fp32
            print(f"{name:52s} {row['tok_s']:8.1f} tok/s  bound {row['bound_tok_s']:8.1f}  "
                  f"{row['of_bound']:.2f} of bound  {versus}  ({row['weight_mib']:.0f} MiB)", flush=True)
    if not args.json:
        print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s, {args.layers} Phi-2 layers' Linears, "
              f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
