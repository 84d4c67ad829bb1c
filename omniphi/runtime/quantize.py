"""Weight-only int8 / int4 quantisation of the LLM's Linear layers, for decode speed.

Decode is memory-bound: each token reads every LLM weight once, so bytes per weight decide the
speed. The matmuls are torch's own weight-only kernels (`aten._weight_int8pack_mm`: int8 weights with
one scale per output row; `aten._weight_int4pack_mm_for_cpu` / `aten._weight_int4pack_mm`: 4-bit
weights in groups along the input with a scale and zero each), the kernels torchao's int8/int4
weight-only configs wrap. We call them directly because, measured on this CPU
(bench/quantized_decode.py, README "Devices and weight formats"), torchao's int8 config in eager
mode converts the whole int8 weight back to bf16 on every call (slower than bf16), its CPU int4
layout is still a prototype, and bitsandbytes' CPU kernels are far from the bound without the hub's
`kernels` package.

Only the decoder's Linear layers are quantised: the output head (tied to the embeddings in some
LLMs, and the most sensitive layer), the embeddings, the vision and audio towers and the projectors
keep their dtype. Quantising happens once, when the model is loaded.
"""

from __future__ import annotations

import threading
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Quantization = Literal["none", "int8", "int4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")
INT4_GROUP_SIZES = (128, 64, 32)  # the first that divides a layer's input size is used
# From this many rows (a prompt's prefill, not a decode step) an int8 layer converts its weight into a
# bf16 scratch matrix and runs one dense matmul: the weight-only kernel is a matrix-vector product whose
# time grows with every row, while converting costs about one pass over the weight. Where the two cross
# depends on the CPU's bf16 matmul (`bench/layer_paths.py --prefill-rows N` compares them); 96 keeps decode
# batches and short follow-up turns on the int8 kernel, which reads half the bytes.
DENSE_PREFILL_ROWS = 96
_scratch = threading.local()  # per thread: two engines in two threads must not share a scratch matrix


def _scratch_matrix(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable matrix of `shape`, grown as needed, one per thread, dtype and device: allocating a
    fresh one per layer and call costs more than the conversion itself."""
    key = (dtype, device)
    store = getattr(_scratch, "matrices", None)
    if store is None:
        store = _scratch.matrices = {}
    numel = shape[0] * shape[1]
    matrix = store.get(key)
    if matrix is None or matrix.numel() < numel:
        matrix = store[key] = torch.empty(numel, dtype=dtype, device=device)
    return matrix[:numel].view(shape)


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (int8 weight * per-row scale)^T + bias, without materialising the dequantised weight."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # symmetric, one scale per output row
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(compute_dtype),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(self.scale.dtype)
        if flat.shape[0] >= DENSE_PREFILL_ROWS:
            # int8 values are exact in bf16/fp16, and the scale is per output row, so scaling the product
            # equals multiplying by the dequantised weight
            weight = _scratch_matrix(self.weight_int8.shape, flat.dtype, flat.device).copy_(self.weight_int8)
            y = F.linear(flat, weight) * self.scale
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


class Int4WeightOnlyLinear(nn.Module):
    """4-bit asymmetric weights in groups of `group_size` inputs: w ≈ (q − 8) · scale + zero, q in 0..15
    (the tinygemm convention both torch kernels use). Activations run in bf16."""

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        weight = linear.weight.detach().float()
        groups = weight.reshape(self.out_features, -1, group_size)
        low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
        scale = (high - low).clamp(min=1e-6) / 15
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(self.out_features, -1)
        zero = low + 8 * scale
        # [input groups, output rows, (scale, zero)], the layout the kernels read
        scales_and_zeros = torch.cat([scale, zero], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("weight_int4", _pack_int4(q, weight.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if flat.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(flat, self.weight_int4, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight_int4, self.group_size,
                                                           self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _apply(self, fn, recurse=True):
        # The packed layout differs between the CPU and CUDA kernels: moving the layer across devices
        # would hand one kernel the other's layout. Quantise on the device the model runs on instead.
        before = self.weight_int4.device
        result = super()._apply(fn, recurse)
        if self.weight_int4.device.type != before.type:
            raise RuntimeError("an int4-quantised layer cannot move between CPU and GPU; load the model with "
                               "the device it runs on")
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group_size}"


def _pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # untested here (no GPU): the layout torch's CUDA kernel documents
        packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        inner_k_tiles = next(t for t in (8, 4, 2) if q.shape[1] % (t * 16) == 0)
        return torch.ops.aten._convert_weight_to_int4pack(packed, inner_k_tiles)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)


def decoder_linears(language_model: nn.Module):
    """(name, module) of an LLM's plain Linear layers, its output head excluded (it maps to the
    vocabulary, is tied to the embeddings in some LLMs, and is kept in full precision, as
    bitsandbytes' integration does). LoRA's own layers are excluded too."""
    head = language_model.get_output_embeddings()
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Linear) and module is not head and "lora_" not in name:
            yield name, module


def quantize_linear_layers_(module: nn.Module, mode: Quantization, layers=None) -> int:
    """Replace `layers` ((name, nn.Linear) under `module`; default: all of its Linears) by their int8/int4
    weight-only versions, in place, on the device they are on. Returns how many were replaced; a layer
    whose input size no int4 group size divides keeps its weights."""
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {mode!r}")
    if mode == "none":
        return 0
    if layers is None:
        layers = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    replaced = 0
    for name, linear in list(layers):
        if mode == "int8":
            compute = linear.weight.dtype if linear.weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
            quantized = Int8WeightOnlyLinear(linear, compute)
        else:
            group = next((g for g in INT4_GROUP_SIZES if linear.in_features % g == 0), None)
            if group is None:
                continue
            quantized = Int4WeightOnlyLinear(linear, group)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, quantized)
        replaced += 1
    return replaced


def quantize_language_model_(language_model: nn.Module, mode: Quantization) -> int:
    """Quantise an LLM's decoder Linears in place; its output head and embeddings stay as they are."""
    return quantize_linear_layers_(language_model, mode, decoder_linears(language_model))
