"""`omniphi bench`: how fast a model answers here, against plain transformers `generate` in fp32.

    omniphi bench --model phi2-random --dtype float32,bfloat16 --new-tokens 8 [--json]

Measured in one run (ratios between runs on a shared machine mean little): the memory bandwidth;
then for each configuration (dtype × quantize) the decode bound (bandwidth / bytes of weights read
per generated token), decode tok/s of one stream, time to first token for one image + a question
(cold caches), time to first token of a follow-up question with that image in the history,
and the aggregate decode tok/s of 4 concurrent streams over 1; and the baseline: the same model in
fp32 through transformers' `generate` (what `omniphi ask` ran before the inference engine).
Generation ignores EOS, so every run decodes --new-tokens tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch

QUESTION = "What is in the image? Describe the picture in detail."
FOLLOW_UP = "What colour is the circle?"
STREAMS = 4


@dataclass
class BenchResult:
    config: str
    decode_tok_s: float
    decode_bound_tok_s: float
    ttft_s: float
    followup_ttft_s: float
    streams4_speedup: float
    baseline_decode_tok_s: float
    baseline_ttft_s: float
    bandwidth_gb_s: float
    weight_bytes_per_token: int
    prompt_tokens: int
    followup_prefilled_tokens: int
    new_tokens: int


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from omniphi.cli_support import DEVICE_HELP, positive_int

    parser.add_argument("--model", default="phi2-random", help="preset or model directory")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto",
                        help="auto (what `omniphi ask` picks here), float32, bfloat16, float16; several comma-separated")
    parser.add_argument("--quantize", default="none",
                        help="none, int8, int4 (LLM weights only); several comma-separated, each run with every --dtype")
    parser.add_argument("--new-tokens", type=positive_int, default=16, help="tokens decoded per measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")


def run_bench(args) -> int:
    from omniphi.cli_support import CliError
    from omniphi.runtime.devices import DTYPES
    from omniphi.runtime.loading import preferred_defaults, resolve_choice
    from omniphi.runtime.quantize import QUANTIZATIONS

    preferred = preferred_defaults(args.model)
    device = resolve_choice(args.device, "float32", "none", preferred).device
    bad = [d for d in args.dtype.split(",") if d not in ("auto", *DTYPES)]
    if bad:
        raise CliError(f"--dtype must be among auto, {', '.join(DTYPES)}; not {', '.join(bad)}")
    bad = [q for q in args.quantize.split(",") if q not in QUANTIZATIONS]
    if bad:
        raise CliError(f"--quantize must be among {', '.join(QUANTIZATIONS)}; not {', '.join(bad)}")
    dtypes = [str(resolve_choice(args.device, d, "none", preferred).dtype).removeprefix("torch.")
              for d in args.dtype.split(",")]
    configs = list(dict.fromkeys((d, q) for q in args.quantize.split(",") for d in dtypes))
    results = bench(args.model, device=device, configs=configs, new_tokens=args.new_tokens)
    for result in results:
        print(json.dumps(asdict(result)) if args.json else _line(result), flush=True)
    return 0


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _line(r: BenchResult) -> str:
    return (f"{r.config}: decode {r.decode_tok_s:.2f} tok/s = {r.decode_tok_s / r.decode_bound_tok_s:.2f} of its bound "
            f"{r.decode_bound_tok_s:.2f} ({r.decode_tok_s / r.baseline_decode_tok_s:.2f}x the fp32 baseline's "
            f"{r.baseline_decode_tok_s:.2f}); TTFT {r.ttft_s:.2f} s = {r.ttft_s / r.baseline_ttft_s:.2f}x the baseline's "
            f"{r.baseline_ttft_s:.2f} s; follow-up TTFT {r.followup_ttft_s:.2f} s = {r.followup_ttft_s / r.ttft_s:.2f}x "
            f"the first; 4 streams {r.streams4_speedup:.2f}x one; bandwidth {r.bandwidth_gb_s:.1f} GB/s")


# --------------------------------------------------------------------------- measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, megabytes: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: the best of a few sums over a buffer much larger than any cache."""
    buffer = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32, device=device)
    best = math.inf
    for _ in range(repeats + 1):  # the first pass warms up
        _sync(device)
        started = time.perf_counter()
        buffer.sum()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return buffer.numel() * 4 / best / 1e9


def weight_bytes_per_token(language_model) -> int:
    """Bytes of weights one decode step reads: every LLM weight, quantised ones included (they are
    buffers), except the input embedding table, of which it reads one row (unless the output head
    shares it, then the head reads all of it)."""
    embedding = language_model.get_input_embeddings().weight
    head = language_model.get_output_embeddings()
    skip = set() if getattr(head, "weight", None) is embedding else {id(embedding)}  # a quantised head has codes
    tensors = {id(t): t for t in [*language_model.parameters(), *language_model.buffers()] if id(t) not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def sample_picture():
    """The picture of every first turn measured (and of bench/ scripts that measure the same turn)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (336, 336), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((60, 80, 200, 220), fill=(200, 30, 30))
    return image


def user_message(*parts):
    """A user message of text (str) and picture (PIL image) parts, in order."""
    return {"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str)
                                        else {"type": "image", "image": p} for p in parts]}


def first_turn(question: str = QUESTION) -> list[dict]:
    """The conversation whose first token every configuration is timed on: the sample picture + a question."""
    return [user_message(sample_picture(), question)]


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


class _TokenTimes:
    """A `generate` streamer that notes when each new token arrives."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate() first puts the prompt (empty with inputs_embeds)
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def baseline(loaded, new_tokens: int, device: torch.device) -> tuple[float, float]:
    """(decode tok/s, TTFT s) of transformers' `generate` on the model as loaded (fp32), one image +
    the question, as `omniphi ask` ran before the inference engine."""
    model, processor = loaded.model, loaded.processor

    def generate(conversation, n) -> list[float]:
        streamer = _TokenTimes()
        started = time.perf_counter()
        batch = processor([conversation], add_generation_prompt=True, with_labels=False, padding_side="left")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=processor.pad_token_id, streamer=streamer)
        _sync(device)
        return [started] + streamer.times

    generate([user_message("Warm up.")], 2)  # first calls pay for allocations and kernel choices
    times = generate(first_turn(), new_tokens)
    return (len(times) - 2) / (times[-1] - times[1]), times[1] - times[0]


def measure(assistant, new_tokens: int, device: torch.device) -> dict:
    """One configuration through the Assistant (empty caches at the start)."""
    from omniphi.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens)

    def start(messages):
        sequence = assistant.begin(messages, settings, ignore_eos=True)
        assistant.prefill(sequence)
        _sync(device)
        return sequence

    def decode(sequences) -> float:
        batch = assistant.new_batch()
        for sequence in sequences:
            batch.add(sequence)
        started = time.perf_counter()
        while len(batch):
            batch.step()
        _sync(device)
        return sum(len(s.token_ids) - 1 for s in sequences) / (time.perf_counter() - started)

    decode([start([user_message("Warm up.")])])  # first calls pay for allocations and kernel choices
    first = first_turn()
    sequence, ttft = _timed(lambda: start(first))
    decode_tok_s = decode([sequence])
    follow_up = first + [{"role": "assistant", "content": sequence.text()}, user_message(FOLLOW_UP)]
    second, followup_ttft = _timed(lambda: start(follow_up))
    stories = [[user_message(f"Tell me story number {i} about a lighthouse keeper.")] for i in range(STREAMS + 1)]
    one = decode([start(stories[0])])
    together = decode([start(s) for s in stories[1:]])
    return dict(decode_tok_s=decode_tok_s, ttft_s=ttft, followup_ttft_s=followup_ttft,
                streams4_speedup=together / one, prompt_tokens=sequence.prompt_tokens,
                followup_prefilled_tokens=second.prompt_tokens - second.reused_tokens)


def bench(spec: str, *, device: torch.device, configs: list[tuple[str, str]], new_tokens: int = 16) -> list[BenchResult]:
    """Load `spec` once in fp32 (the baseline), convert it to each unquantised dtype in turn (widest
    first), then load it afresh for each quantised configuration (quantising needs the full weights).
    Results come in the order of `configs`."""
    from omniphi.runtime.assistant import Assistant
    from omniphi.runtime.fast_ops import install_fast_ops
    from omniphi.runtime.loading import load, load_weights
    from omniphi.runtime.quantize import release_freed_memory

    _progress(f"loading {spec} (float32)")
    loaded = load_weights(spec, dtype=torch.float32)
    loaded.model.to(device)
    bandwidth = measure_bandwidth(device)
    _progress(f"bandwidth {bandwidth:.1f} GB/s; baseline: transformers generate, float32")
    baseline_decode, baseline_ttft = baseline(loaded, new_tokens, device)
    _progress(f"baseline: decode {baseline_decode:.2f} tok/s, TTFT {baseline_ttft:.2f} s")
    install_fast_ops(loaded.model)  # from here on, the model as `load` gives it to omniphi ask/serve

    def result(model_loaded, dtype: str, quantize: str) -> BenchResult:
        numbers = measure(Assistant(model_loaded), new_tokens, device)
        bytes_per_token = weight_bytes_per_token(model_loaded.model.language_model)
        return BenchResult(
            config=dtype + ("" if quantize == "none" else f"+{quantize}") + ("" if device.type == "cpu" else f"@{device}"),
            decode_bound_tok_s=bandwidth * 1e9 / bytes_per_token, baseline_decode_tok_s=baseline_decode,
            baseline_ttft_s=baseline_ttft, bandwidth_gb_s=bandwidth, weight_bytes_per_token=bytes_per_token,
            new_tokens=new_tokens, **numbers)

    results: dict[tuple[str, str], BenchResult] = {}
    for dtype in sorted({d for d, q in configs if q == "none"}, key=lambda d: -getattr(torch, d).itemsize):
        _progress(f"{dtype}: the Assistant")
        loaded.model.to(getattr(torch, dtype))
        results[dtype, "none"] = result(loaded, dtype, "none")
    del loaded
    release_freed_memory()  # a second copy of a Phi-2-sized model must not sit beside the quantised one
    for dtype, quantize in [c for c in configs if c[1] != "none"]:
        _progress(f"{dtype} + {quantize}: loading and quantising, then the Assistant")
        quantized = load(spec, device=str(device), dtype=dtype, quantize=quantize)
        results[dtype, quantize] = result(quantized, dtype, quantize)
        del quantized
        release_freed_memory()
    return [results[c] for c in configs]
