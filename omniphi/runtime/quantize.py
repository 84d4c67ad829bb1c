"""Weight-only int8 / int4 quantisation of the LLM's Linear layers, for decode speed.

Decode is memory-bound: each token reads every LLM weight once, so bytes per weight decide the
speed, provided the kernel unpacks them as fast as memory delivers them. On the CPU the matmuls are
ONNX Runtime's `MatMulNBits` operator (its MLAS kernels quantise the activations per block to int8
on the fly, `accuracy_level` 4, as llama.cpp does, and multiply in integers): one small session per
layer, all drawing their outputs from one shared memory arena. torch's own weight-only CPU kernels
(`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`, which torchao's configs wrap) unpack
more slowly than memory delivers on a few cores, and bitsandbytes' CPU kernels are slower still
(README, "Devices and weight formats", measured by bench/quantized_decode.py). On CUDA (untested here: no GPU) torch's kernels run.

Formats: int8 is symmetric with one scale per output row; int4 is asymmetric in groups along the input
(on the CPU: blocks of `INT4_BLOCK` inputs with an integer zero point, MatMulNBits' convention; on CUDA:
torch's tinygemm layout). Memory: a CPU layer keeps its codes (shared with its session, which reads them in
place) plus the packed copy ONNX Runtime builds from them, about twice the quantised size.

Layers that read the very same input (a Phi block's q, k, v and fc1; a Llama block's q, k, v, and gate
and up) are quantised as one stacked layer on the CPU (`SharedInputProjections`): one kernel call
instead of several per decode step, each call having a fixed cost that a one-row product does not
amortise (bench/shared_projections.py compares the two).

What is quantised: the LLM's decoder Linear layers in the mode asked for, and its output head in int8
whichever mode (`HEAD_QUANTIZATION`). The head is the most sensitive layer, so it never goes to 4 bits
(llama.cpp's 4-bit formats keep it at 6 or 8 bits for the same reason), but it is read in full on
every decode step: Phi-2's (51,200 × 2560) is a sixth of a float32 + int8 model's bytes per token and
a quarter of an int4 one's if left in full precision. A head tied to the input embeddings gets its own
int8 copy; the embedding table keeps its weights. The embeddings, the vision and audio towers and the
projectors keep their dtype. Quantising happens once, when the model is loaded, on the device it runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import threading
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from omniphi.runtime.devices import cpu_bf16_matmul_is_faster, cpu_matmul_shares

Quantization = Literal["none", "int8", "int4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")
HEAD_QUANTIZATION: Quantization = "int8"  # the output head's format in every quantised mode (docstring above)
INT4_GROUP_SIZES = (128, 64, 32)  # CUDA: the first that divides a layer's input size is used
ACCURACY_LEVEL = 4  # MatMulNBits: activations rounded to int8 per block, integer products (its fast path)
NBITS_BLOCK = 128  # MatMulNBits' block along the input for int8 (inputs padded with zeros to whole blocks)
# int4's block (a float32 scale and a 4-bit zero per block). Blocks of 32 would keep more: on the
# starter's 576-wide layers they lose 4.1 points of shapes accuracy where blocks of 128 lose 16.7, but they
# hold 5.1 bits per weight against 4.3, and Phi-2-sized layers decoded 15-35 % slower with them
# (bench/quantized_decode.py; README, "Devices and weight formats"). int4 is meant for large models.
INT4_BLOCK = 128
# From this many rows (a prompt's prefill, not a decode step) an int8 layer leaves the weight-only kernel,
# whose time grows with every row, for one large product: on CUDA a dense matmul in the model's dtype; on
# a CPU the fastest the probe found (`prefill_dtype_on_this_cpu`): integer products (`torch._int_mm`,
# int8 activations × the int8 codes, which VNNI and AMX run several times faster than float32), or a bf16
# matmul over the weight converted into a scratch matrix (where bf16 matmul hardware makes it clearly
# faster than float32), or, where neither wins, the kernel at any length. `bench/layer_paths.py
# --prefill-rows N` compares the paths on a CPU.
DENSE_PREFILL_ROWS = 96
# The integer prefill path is taken where the probe's int8 matmul takes at most this share of float32's:
# the kernel it replaces already runs a prompt at ~0.7x a float32 matmul (bench/layer_paths.py).
INTEGER_PREFILL_SHARE = 0.5
# The integer prefill path rounds activations to int8 with one scale per row (a token), as one product must
# for speed; an input feature far larger than the rest (LLMs have a few, in fixed channels) would flatten
# every other input of its row to a few levels, so the columns whose peak over the prompt exceeds this many
# times the median column's peak are multiplied in float instead (LLM.int8()'s decomposition), at most
# 1/OUTLIER_SHARE of the columns.
OUTLIER_PEAK_RATIO = 4.0
OUTLIER_SHARE = 32
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


@functools.cache
def _register_shared_cpu_arena() -> None:
    """One memory arena for every NBitsKernel session of the process (ONNX Runtime's environment-level
    allocator, which sessions opt into with `session.use_env_allocators`). With an arena per session,
    each of a Phi-2 model's ~100 sessions would keep the largest output it ever produced (a prompt's:
    tens of MB each, gigabytes in all) and write every output into its own memory, cold in the caches;
    a layer's output lives only until the next layers have read it, so one arena serves them all from
    the same few blocks."""
    import onnxruntime

    cpu = onnxruntime.OrtMemoryInfo("Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                    onnxruntime.OrtMemType.DEFAULT)
    onnxruntime.create_and_register_allocator(cpu, onnxruntime.OrtArenaCfg({}))  # {}: ONNX Runtime's defaults


class NBitsKernel:
    """y = x @ ((codes − zero_points) · scales)^T on the CPU, through one ONNX Runtime session running the
    `com.microsoft.MatMulNBits` operator. codes: uint8 [out, blocks, block·bits/8], packed low-first along
    the input; scales: float32 [out, blocks]; zero_points: None (the midpoint, 2^(bits−1)) or uint8
    [out, blocks] (two per byte for 4 bits). The arrays are handed to ONNX Runtime as external
    initializers, so it reads them where they are (the layer's buffers) instead of keeping a copy of its
    own beside the packed one it builds at load; they must not be written to afterwards."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *,
                 in_features: int, out_features: int, bits: int, block_size: int):
        import onnxruntime
        from onnx import TensorProto, helper

        arrays = {"B": codes, "scales": scales} | ({} if zero_points is None else {"zero_points": zero_points})
        placeholders = []
        for name, array in arrays.items():  # declared in the graph, their data supplied below
            tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
            tensor.data_location = TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="supplied-at-session-creation")
            placeholders.append(tensor)
        node = helper.make_node("MatMulNBits", ["A", *arrays], ["Y"], domain="com.microsoft", K=in_features,
                                N=out_features, bits=bits, block_size=block_size, accuracy_level=ACCURACY_LEVEL)
        graph = helper.make_graph(
            [node], "linear", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["rows", in_features])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", out_features])], initializer=placeholders)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                        helper.make_opsetid("com.microsoft", 1)])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle threads must sleep, not spin: between two layers torch's own threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _register_shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.log_severity_level = 3
        # kept referenced for the session's lifetime: ONNX Runtime does not own this memory
        self._initializers = [onnxruntime.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        options.add_external_initializers(list(arrays), self._initializers)
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [rows, in_features] on the CPU, any float dtype → float32 [rows, out_features]."""
        rows = x.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"A": rows})[0])


def prefill_dtype_on_this_cpu() -> torch.dtype | None:
    """How an int8 layer multiplies a prompt on this CPU (DENSE_PREFILL_ROWS and more rows): torch.int8
    (integer products) or torch.bfloat16 (a dense matmul), whichever the CPU probe times faster against
    float32 among those that beat the kernel; None, the kernel."""
    shares = cpu_matmul_shares()
    candidates = {}
    if shares["int8"] <= INTEGER_PREFILL_SHARE:
        candidates[torch.int8] = shares["int8"]
    if cpu_bf16_matmul_is_faster():
        candidates[torch.bfloat16] = shares["bf16"]
    return min(candidates, key=candidates.get, default=None)


def runs_cpu_kernels(module: nn.Module) -> bool:
    """Whether `module` holds quantised layers that run ONNX Runtime's kernels (on the CPU)."""
    return any(isinstance(m, (Int8WeightOnlyLinear, Int4WeightOnlyLinear)) and m.kernel is not None
               for m in module.modules())


@contextlib.contextmanager
def cores_left_to_kernels():
    """Run the enclosed torch ops on one thread of the calling thread's pool, so that ONNX Runtime's
    kernels get the cores. A decode step of a quantised model is mostly those kernels, and between two
    of them torch's idle OpenMP workers keep spinning (libgomp spins before it sleeps) on the cores
    ONNX Runtime's threads need; the torch ops of a step (attention over the cache, norms) are small.
    A prompt's prefill, whose attention and dense matmuls are large, keeps every thread. torch's
    setting is per thread but is also the default a thread that first uses torch meanwhile starts with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _blocks(in_features: int, block: int = NBITS_BLOCK) -> int:
    return -(-in_features // block)


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (int8 weight * per-row scale)^T + bias, without materialising the dequantised weight.

    On the CPU the codes are stored as MatMulNBits reads them (uint8 = int8 + 128, the input padded
    to whole blocks with zeros) and shared with its session; on CUDA as torch's int8 kernel reads them."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # symmetric, one scale per output row
        self.in_features, self.out_features = linear.in_features, linear.out_features
        signed = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(compute_dtype),
                                                                  requires_grad=False)
        self.kernel = None
        # how a prompt is multiplied (DENSE_PREFILL_ROWS): a float dtype, a dense matmul in it; int8, integer
        # products; None, the kernel at any length
        self.prefill_dtype = compute_dtype
        if weight.device.type == "cpu":
            self.prefill_dtype = prefill_dtype_on_this_cpu()
            blocks = _blocks(self.in_features)
            codes = torch.full((self.out_features, blocks * NBITS_BLOCK), 128, dtype=torch.uint8)  # 128 = 0
            codes[:, :self.in_features] = (signed.to(torch.int16) + 128).to(torch.uint8)
            self.register_buffer("codes", codes)
            block_scales = scale[:, None].expand(-1, blocks).contiguous().numpy()
            self.kernel = NBitsKernel(codes.view(self.out_features, blocks, NBITS_BLOCK).numpy(), block_scales,
                                      None, in_features=self.in_features, out_features=self.out_features, bits=8,
                                      block_size=NBITS_BLOCK)
        else:
            self.register_buffer("weight_int8", signed)

    def _integer_weight(self, out: torch.Tensor) -> torch.Tensor:
        """The weight before scaling, written into `out` ([out, in], any float dtype: the integers
        −127..127 are exact in all of them)."""
        if self.kernel is None:
            return out.copy_(self.weight_int8)
        return out.copy_(self.codes[:, :self.in_features]).sub_(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(self.scale.dtype)
        prefill = flat.shape[0] >= DENSE_PREFILL_ROWS and self.prefill_dtype is not None
        if prefill and self.prefill_dtype == torch.int8:
            y = self._integer_product(flat).to(flat.dtype) * self.scale
        elif prefill:
            # the scale is per output row, so scaling the product equals multiplying by the dequantised weight
            weight = self._integer_weight(_scratch_matrix((self.out_features, self.in_features), self.prefill_dtype,
                                                          flat.device))
            y = F.linear(flat.to(self.prefill_dtype), weight).to(flat.dtype) * self.scale
        elif self.kernel is not None:
            y = self.kernel(flat).to(flat.dtype)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _integer_product(self, flat: torch.Tensor) -> torch.Tensor:
        """flat @ codes^T in float32, before the weight's scale: the activations rounded to int8 per row,
        their outlier columns (OUTLIER_PEAK_RATIO) multiplied in float. The codes are stored offset by 128
        for the kernel; flipping their top bit gives the signed ones."""
        signed = torch.bitwise_xor(self.codes[:, :self.in_features], 128,
                                   out=_scratch_matrix((self.out_features, self.in_features), torch.uint8,
                                                       flat.device)).view(torch.int8)
        x = flat.float()  # may be the caller's tensor: not written to
        peaks = x.abs().amax(dim=0)
        outliers = (peaks > peaks.median() * OUTLIER_PEAK_RATIO).nonzero().flatten()
        if len(outliers) > self.in_features // OUTLIER_SHARE:
            outliers = peaks.topk(self.in_features // OUTLIER_SHARE).indices
        if len(outliers):
            outlier_inputs = x[:, outliers]
            x = x.index_fill(1, outliers, 0.0)
        scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12) / 127.0
        rounded = (x / scale).round_().to(torch.int8)  # |values| <= 127: no clamp needed
        y = torch._int_mm(rounded, signed.t()).float().mul_(scale)
        if len(outliers):
            y.addmm_(outlier_inputs, signed[:, outliers].t().float())
        return y

    def dequantized_weight(self) -> torch.Tensor:
        integer = torch.empty(self.out_features, self.in_features, device=self.scale.device)
        return self._integer_weight(integer) * self.scale.float()[:, None]

    def _apply(self, fn, recurse=True):
        return _stay_on_device(self, "scale", super()._apply, fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


class Int4WeightOnlyLinear(nn.Module):
    """4-bit asymmetric weights in groups along the input. On the CPU: MatMulNBits' blocks of `INT4_BLOCK`,
    w ≈ (q − zero) · scale with q and an integer zero in 0..15; on CUDA: torch's tinygemm convention,
    w ≈ (q − 8) · scale + zero, in groups of `group_size`, activations in bf16 (`group_size` is CUDA's
    only: the CPU's blocks are always `INT4_BLOCK`)."""

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        self.kernel = None
        if weight.device.type == "cpu":
            self.group_size = INT4_BLOCK
            self._init_nbits(weight)
        else:
            self.group_size = group_size
            self._init_tinygemm(weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(linear.weight.dtype),
                                                                  requires_grad=False)

    def _init_nbits(self, weight: torch.Tensor) -> None:
        blocks = _blocks(self.in_features, INT4_BLOCK)
        padded = torch.zeros(self.out_features, blocks * INT4_BLOCK)
        padded[:, :self.in_features] = weight
        groups = padded.view(self.out_features, blocks, INT4_BLOCK)
        low = groups.amin(dim=2).clamp(max=0)  # 0 is representable: the padding of a ragged block adds nothing
        high = groups.amax(dim=2).clamp(min=0)
        scale = (high - low).clamp(min=1e-8) / 15
        zero = torch.round(-low / scale).clamp(0, 15)
        q = torch.round(groups / scale[..., None] + zero[..., None]).clamp(0, 15).to(torch.uint8)
        zero_codes = zero.to(torch.uint8)
        if blocks % 2:
            zero_codes = torch.cat([zero_codes, torch.zeros(self.out_features, 1, dtype=torch.uint8)], 1)
        # the buffers are the session's initializers (NBitsKernel): contiguous, never written again
        self.register_buffer("weight_int4", (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous())
        self.register_buffer("scales", scale.contiguous())
        self.register_buffer("zero_points", (zero_codes[:, 0::2] | (zero_codes[:, 1::2] << 4)).contiguous())
        self.kernel = NBitsKernel(self.weight_int4.numpy(), self.scales.numpy(), self.zero_points.numpy(),
                                  in_features=self.in_features, out_features=self.out_features, bits=4,
                                  block_size=INT4_BLOCK)

    def _init_tinygemm(self, weight: torch.Tensor) -> None:
        q, scales_and_zeros = tinygemm_int4(weight, self.group_size)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("weight_int4", _pack_int4(q, weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if self.kernel is not None:
            y = self.kernel(flat)
        else:
            y = torch.ops.aten._weight_int4pack_mm(flat.to(torch.bfloat16), self.weight_int4, self.group_size,
                                                   self.scales_and_zeros)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the CPU layout encodes (what the kernel multiplies by, up to its
        activation rounding); the CUDA layout is torch's opaque tinygemm packing."""
        if self.kernel is None:
            raise NotImplementedError("the CUDA int4 layout is torch's packed tinygemm format; it is not unpacked")
        q = torch.stack([self.weight_int4 & 15, self.weight_int4 >> 4], dim=-1).flatten(-2).float()
        zeros = torch.stack([self.zero_points & 15, self.zero_points >> 4], dim=-1).flatten(-2)
        zeros = zeros[:, :q.shape[1]].float()  # an odd number of blocks pads the zero points by one
        weight = (q - zeros[..., None]) * self.scales.float()[..., None]
        return weight.flatten(1)[:, :self.in_features]

    def _apply(self, fn, recurse=True):
        return _stay_on_device(self, "weight_int4", super()._apply, fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group_size}"


def tinygemm_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's int4 kernels' convention, w ≈ (q − 8) · scale + zero per group of `group_size` inputs:
    (q as int32 [out, in] in 0..15, bf16 [groups, out, (scale, zero)], the layout the kernels read)."""
    out_features = weight.shape[0]
    groups = weight.float().reshape(out_features, -1, group_size)
    low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
    scale = (high - low).clamp(min=1e-6) / 15
    q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(out_features, -1)
    zero = low + 8 * scale
    return q, torch.cat([scale, zero], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)


def _stay_on_device(module: nn.Module, buffer: str, apply, fn, recurse):
    """A quantised layer's kernel is made for the device it was quantised on (a CPU layer's codes live in
    its ONNX Runtime session, a CUDA int4 layer's packed layout is the CUDA kernel's): moving it would
    hand one kernel the other's weights. Quantise on the device the model runs on instead."""
    before = getattr(module, buffer).device
    result = apply(fn, recurse)
    if getattr(module, buffer).device.type != before.type:
        raise RuntimeError("a quantised layer cannot move between CPU and GPU; load the model with the device it "
                           "runs on")
    return result


def _pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Untested here (no GPU): the layout torch's CUDA kernel documents."""
    packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
    inner_k_tiles = next(t for t in (8, 4, 2) if q.shape[1] % (t * 16) == 0)
    return torch.ops.aten._convert_weight_to_int4pack(packed, inner_k_tiles)


def decoder_linears(language_model: nn.Module):
    """(name, module) of an LLM's plain Linear layers, its output head excluded (it maps to the
    vocabulary, is tied to the embeddings in some LLMs, and is kept in full precision, as
    bitsandbytes' integration does). LoRA's own layers are excluded too."""
    head = language_model.get_output_embeddings()
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Linear) and module is not head and "lora_" not in name:
            yield name, module


def quantize_linear_layers_(module: nn.Module, mode: Quantization, layers=None) -> int:
    """Replace `layers` ((name, nn.Linear) under `module`, of which only the names are read; default: all of
    its Linears) by their int8/int4 weight-only versions, in place, on the device they are on. Returns how
    many were replaced; on CUDA a layer whose input size no int4 group size divides keeps its weights."""
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {mode!r}")
    if mode == "none":
        return 0
    if layers is None:
        layers = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    # by name, so each full-precision layer is freed once replaced (a Phi-2's would otherwise all
    # stay alive beside their quantised copies until the end)
    names = [name for name, _ in layers]
    replaced = 0
    for name in names:
        linear = module.get_submodule(name)
        quantized = _quantized(linear, mode)
        if quantized is None:
            continue
        _replace(module, name, quantized)
        del linear  # its weight is freed here (no reference cycle holds it), so no collection is needed
        _trim_heap()
        replaced += 1
    return replaced


def _quantized(linear: nn.Linear, mode: Quantization) -> nn.Module | None:
    """`linear` in `mode` on its device; None where that device has no kernel for it (CUDA int4 needs an
    input size one of `INT4_GROUP_SIZES` divides)."""
    on_cpu = linear.weight.device.type == "cpu"
    if mode == "int8":
        # CUDA's int8 kernel wants bf16/fp16 activations; on the CPU they keep the model's dtype
        compute = linear.weight.dtype if on_cpu or linear.weight.dtype != torch.float32 else torch.bfloat16
        return Int8WeightOnlyLinear(linear, compute)
    group = next((g for g in INT4_GROUP_SIZES if linear.in_features % g == 0), None)
    if group is None and not on_cpu:
        return None
    return Int4WeightOnlyLinear(linear, group)


def _replace(module: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, replacement)


class SharedInputProjections(nn.Module):
    """Linear layers that read the very same input, quantised as one: their weights stacked row-wise into
    one quantised layer (`fused`), so that a decode step runs one kernel call for all of them. On the CPU
    every call is an ONNX Runtime session run with a fixed cost (waking the session's worker thread,
    handing over the arrays) that a few-row product does not amortise; Phi-2 makes 6 such calls per
    decoder layer, 3 once its q, k, v and fc1 share one. Quantising stacked rows gives each row the codes
    and scales it would get alone (int8 scales per row, int4 blocks run along a row).

    The layers' places are taken by `ProjectionSlice`s. The first one called with an input computes the
    outputs of all and keeps the others' until they are taken; a slice called with another input (or
    twice with the same one) computes again, so any call order is correct, merely slower."""

    def __init__(self, fused: nn.Module, out_features: list[int]):
        super().__init__()
        self.fused = fused
        ends = np.cumsum(out_features).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends))
        self._pending = threading.local()  # per thread: two engines may share a model

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        pending = self._pending
        outputs = getattr(pending, "outputs", None)
        if outputs is None or pending.input is not x or outputs[index] is None:
            y = self.fused(x)
            outputs = [y[..., start:end] for start, end in self.bounds]
            pending.input = x  # held, so its identity cannot pass to another tensor meanwhile
        result = outputs[index].contiguous()  # callers reshape with .view
        outputs[index] = None
        if any(output is not None for output in outputs):
            pending.outputs = outputs
        else:
            pending.input = pending.outputs = None
        return result


class ProjectionSlice(nn.Module):
    """One layer of a `SharedInputProjections`, where the original Linear stood: its rows of the stacked
    product. The first slice holds the shared layer as its submodule (so the model's modules, buffers
    and moves see it once); the others refer to it."""

    def __init__(self, shared: SharedInputProjections, index: int):
        super().__init__()
        self.index = index
        if index == 0:
            self.shared = shared
        else:
            object.__setattr__(self, "shared", shared)  # a plain reference, not a second registration
        start, end = shared.bounds[index]
        self.in_features, self.out_features = shared.fused.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(x, self.index)

    def dequantized_weight(self) -> torch.Tensor:
        start, end = self.shared.bounds[self.index]
        return self.shared.fused.dequantized_weight()[start:end]

    def extra_repr(self) -> str:
        start, end = self.shared.bounds[self.index]
        return f"rows {start}:{end} of the shared projection"


def shared_input_groups(language_model: nn.Module, names: list[str]) -> list[list[str]]:
    """The layers among `names` (Linears of `language_model`) that read the very same input tensor, found
    by running the model on two tokens and noting what each layer is called with: in a Phi block q, k, v
    and fc1 (attention and MLP in parallel on one normalised input), in a Llama block q, k, v, and gate
    and up. Observed rather than listed per architecture, so any LLM transformers builds is covered; a
    layer called more than once per pass stays alone."""
    calls: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [language_model.get_submodule(name).register_forward_pre_hook(
        lambda _module, args, name=name: calls[name].append(args[0]) if args else None) for name in names]
    try:
        device = next(language_model.parameters()).device
        with torch.inference_mode():
            language_model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    by_input: dict[int, list[str]] = {}
    for name, inputs in calls.items():  # the inputs stay referenced until here, so no two share an id
        if len(inputs) == 1:
            by_input.setdefault(id(inputs[0]), []).append(name)
    return [group for group in by_input.values() if len(group) > 1]


def _quantize_shared_input_group_(module: nn.Module, mode: Quantization, names: list[str]) -> int:
    """Replace the Linears `names` (same input, same device and dtype) by the `ProjectionSlice`s of one
    quantised `SharedInputProjections`. Returns how many layers were replaced (0 where the device has no
    kernel for the stacked layer)."""
    linears = [module.get_submodule(name) for name in names]
    first = linears[0]
    stacked = nn.Linear(first.in_features, sum(linear.out_features for linear in linears),
                        bias=any(linear.bias is not None for linear in linears),
                        device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([linear.weight for linear in linears]))
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([torch.zeros(linear.out_features, dtype=stacked.bias.dtype,
                                                      device=stacked.bias.device)
                                          if linear.bias is None else linear.bias for linear in linears]))
    fused = _quantized(stacked, mode)
    del stacked
    if fused is None:
        return 0
    shared = SharedInputProjections(fused, [linear.out_features for linear in linears])
    for index, name in enumerate(names):
        _replace(module, name, ProjectionSlice(shared, index))
    del linears, first
    _trim_heap()
    return len(names)


def release_freed_memory() -> None:
    """Collect unreachable objects (a dropped model), then hand their pages back to the OS."""
    gc.collect()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the pages of freed memory back to the OS (glibc only; elsewhere nothing to do). glibc keeps
    freed blocks below its mmap threshold in the heap, between the quantised layers allocated since,
    and never reuses most of them: quantising Phi-2 from float32 grew the process by ~0.4 GB per
    decoder layer until it ran out of 24 GB, where trimming after each layer shrinks it as it should."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # glibc's malloc_trim, False where there is none


def quantize_language_model_(language_model: nn.Module, mode: Quantization) -> int:
    """Quantise an LLM in place: its decoder Linears in `mode`, its output head in `HEAD_QUANTIZATION`
    (unless `mode` is "none"); the embeddings stay as they are. Returns how many layers were replaced."""
    # names, not modules: each full-precision layer must be freed as soon as it is replaced
    names = [name for name, _ in decoder_linears(language_model)]
    groups = []
    if mode != "none" and names and all(language_model.get_submodule(name).weight.device.type == "cpu" for name in names):
        # the stacked layer saves kernel calls of ONNX Runtime's (CPU); CUDA's kernels are untested stacked
        groups = shared_input_groups(language_model, names)
    grouped = {name for group in groups for name in group}
    replaced = quantize_linear_layers_(language_model, mode, ((name, None) for name in names if name not in grouped))
    for group in groups:
        replaced += _quantize_shared_input_group_(language_model, mode, group)
    head = language_model.get_output_embeddings()
    if mode != "none" and isinstance(head, nn.Linear):
        name = next(n for n, m in language_model.named_modules() if m is head)
        replaced += quantize_linear_layers_(language_model, HEAD_QUANTIZATION, [(name, head)])
    return replaced
