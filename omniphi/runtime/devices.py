"""Which device and dtype a model runs in: `--device auto|cpu|cuda|cuda:N`, `--dtype auto|float32|bfloat16|float16`.

`auto` dtype is bfloat16 on CUDA, and on a CPU only where bf16 measures faster than float32 at both
things an answer does: a prompt-sized matmul (prefill, the encoders) and a batch-1 matrix-vector
product over 128 MB of float32 weights, more than most CPUs' caches hold (decode; in bf16 through
`linear` and as `mv`, whichever is faster: fast_ops runs that one). CPUs with AMX run both faster in
bf16; others emulate it, and some (measured: an AVX-512-bf16 EPYC) run the matmul faster but decode
slower. The probe takes seconds at most (longest where bf16 is emulated); its timings are cached per
CPU and torch version in $OMNIPHI_CACHE/cpu_probe.json, so it runs once per machine; the other questions asked of it
(how a quantised layer prefills: it also times an int8 matmul; which form a bf16 decode product
takes) are answered from them.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

import torch

from omniphi.errors import DeviceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE_FILE = "cpu_probe.json"
PROBE_ROUNDS = 3  # each product timed once per round; the best of all rounds is kept
CLEAR_WIN = 0.8  # a dtype counts as faster below this share of the other's time: timings on a shared machine are noisy
LAYER = 2048  # the probe's layer-sized product: a 512-row prompt through a LAYER x LAYER weight


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` → cuda when present, else cpu; a CUDA device that is not there is a `DeviceError`."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {text!r}: expected auto, cpu, cuda or cuda:N") from None
    if target.type == "cpu":
        return target
    if target.type != "cuda":
        raise DeviceError(f"unsupported device {text!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {text}: this machine has no CUDA GPU (or this torch build has no CUDA); "
                          f"use --device cpu or auto")
    index = target.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_bf16_is_faster() else torch.float32
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    if DTYPES[dtype] == torch.float16 and device.type == "cpu":
        raise DeviceError("float16 runs only on a GPU here (CPU kernels for it are slow or missing); "
                          "use bfloat16 or float32 on the CPU")
    return DTYPES[dtype]


def cpu_bf16_is_faster() -> bool:
    """True when bf16 beats float32 on this CPU at both a prompt-sized matmul and a decode product (the
    faster of its two forms, the one fast_ops runs)."""
    probe = _cpu_probe()
    fp32, bf16 = probe["fp32"], probe["bf16"]
    return cpu_bf16_matmul_is_faster() and _clearly_faster(min(bf16["decode"], bf16["decode_mv"]),
                                                           fp32["decode"])


def cpu_bf16_mv_is_faster() -> bool:
    """True when a bf16 decode product runs faster as a matrix-vector product (`mv`) than through
    `linear` on this CPU (with AMX it does, on an AVX-512-bf16 EPYC it did not): fast_ops.FewRowLinear."""
    bf16 = _cpu_probe()["bf16"]
    return bf16["decode_mv"] < bf16["decode"] * 0.9  # a margin for noise; linear is the default


def cpu_bf16_matmul_is_faster() -> bool:
    """True when a prompt-sized bf16 matmul beats float32 on this CPU (AMX, AVX-512 BF16), whatever
    decode does."""
    return cpu_matmul_shares()["bf16"] < CLEAR_WIN


def cpu_matmul_shares() -> dict[str, float]:
    """{"bf16": …, "int8": …}: the time of a prompt-sized matmul in that dtype as a share of float32's at
    the same size, on this CPU. int8 is int8 × int8 → int32 products (`torch._int_mm`, which VNNI and AMX
    run several times faster than float32), timed at a layer's size: oneDNN's int8 path has a fixed cost
    per call that makes small products erratic."""
    probe = _cpu_probe()
    return {"bf16": probe["bf16"]["matmul"] / probe["fp32"]["matmul"],
            "int8": probe["int8"]["layer"] / probe["fp32"]["layer"]}


def _clearly_faster(seconds: float, than: float) -> bool:
    return seconds < than * CLEAR_WIN


@functools.cache
def _cpu_probe() -> dict[str, dict[str, float]]:
    """{"fp32": …, "bf16": …, "int8": …}: each dtype's best seconds of a matmul and (fp32, bf16) a decode
    product, measured once per machine and cached on disk."""
    from omniphi.weights.cache import cache_dir

    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    path = cache_dir() / PROBE_FILE
    products = {("fp32", "matmul"): lambda: _matmul_seconds(torch.float32),
                ("fp32", "layer"): lambda: _matmul_seconds(torch.float32, width=LAYER),
                ("fp32", "decode"): lambda: _decode_seconds(torch.float32),
                ("bf16", "matmul"): lambda: _matmul_seconds(torch.bfloat16),
                ("bf16", "decode"): lambda: _decode_seconds(torch.bfloat16),
                ("bf16", "decode_mv"): lambda: _decode_seconds(torch.bfloat16, as_mv=True),
                ("int8", "layer"): lambda: _matmul_seconds(torch.int8, width=LAYER)}
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return {dtype: {kind: float(cached["seconds"][dtype][kind]) for (of, kind) in products if of == dtype}
                    for dtype in ("fp32", "bf16", "int8")}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # Rounds that take every product in turn, each keeping its best: a burst of other work on the
    # machine then slows every dtype alike instead of whichever was being timed, and the answer is cached
    # for good (one probe taken beside a busy test suite once timed bf16 decode level with float32,
    # where quiet runs time it 0.5-0.6x).
    best = dict.fromkeys(products, float("inf"))
    for _ in range(PROBE_ROUNDS):
        for name, product in products.items():
            best[name] = min(best[name], product())
    seconds: dict[str, dict[str, float]] = {}
    for (dtype, kind), value in best.items():
        seconds.setdefault(dtype, {})[kind] = value
    try:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "seconds": seconds}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the probe next time
    return seconds


def _matmul_seconds(dtype: torch.dtype, rows: int = 512, width: int = 1024, repeats: int = 3) -> float:
    """Best time of a prompt-sized matmul (what prefill and the encoders do most): `rows` through a
    `width` x `width` weight, int8 as a quantised layer runs it (`torch._int_mm` with the weight
    transposed). The values do not matter to the speed (none is subnormal), so constant matrices spare
    the random generator's time."""
    a = torch.full((rows, width), 1 if dtype == torch.int8 else 0.5, dtype=dtype)
    weight = torch.full((width, width), 1 if dtype == torch.int8 else 0.25, dtype=dtype)

    def product():
        return torch._int_mm(a, weight.t()) if dtype == torch.int8 else a @ weight.t()

    product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best


def _decode_seconds(dtype: torch.dtype, rows: int = 8192, cols: int = 4096, repeats: int = 3,
                    as_mv: bool = False) -> float:
    """Best time of one token's product over 128 MB of float32 weights (64 MB bf16), through `linear`
    or as a matrix-vector product (constant values, as in `_matmul_seconds`)."""
    weight = torch.full((rows, cols), 0.5, dtype=dtype)
    x = torch.full((1, cols), 0.25, dtype=dtype)

    def product():
        return torch.mv(weight, x[0]) if as_mv else torch.nn.functional.linear(x, weight)

    product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
