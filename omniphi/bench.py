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

import numpy as np
import torch

QUESTION = "What is in the image? Describe the picture in detail."
FOLLOW_UP = "What colour is the circle?"
STREAMS = 4
DTYPES = ("float32", "bfloat16", "float16")


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
    from omniphi.cli import positive_int

    parser.add_argument("--model", default="phi2-random", help="preset or model directory (default phi2-random)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16, or several comma-separated")
    parser.add_argument("--quantize", default="none", help="none (int8/int4 come with the loading layer)")
    parser.add_argument("--new-tokens", type=positive_int, default=16, help="tokens decoded per measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")


def run_bench(args) -> int:
    from omniphi.cli import CliError

    device = _device(args.device)
    dtypes = [("bfloat16" if device.type == "cuda" else "float32") if d == "auto" else d
              for d in args.dtype.split(",")]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise CliError(f"--dtype must be among auto, {', '.join(DTYPES)}; not {', '.join(bad)}")
    if args.quantize != "none":
        raise CliError(f"--quantize {args.quantize} is not available in this build (only none)")
    results = bench(args.model, device=device, dtypes=dtypes, new_tokens=args.new_tokens)
    for result in results:
        print(json.dumps(asdict(result)) if args.json else _line(result), flush=True)
    return 0


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return device


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
    """Bytes of weights one decode step reads: every LLM weight except the input embedding table
    (of which it reads one row)."""
    embedding = language_model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in language_model.parameters() if p is not embedding)


def _picture():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (336, 336), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((60, 80, 200, 220), fill=(200, 30, 30))
    return image


def _user(*parts):
    return {"role": "user", "content": [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "image": p}
                                        for p in parts]}


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

    generate([_user("Warm up.")], 2)  # first calls pay for allocations and kernel choices
    times = generate([_user(_picture(), QUESTION)], new_tokens)
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

    decode([start([_user("Warm up.")])])  # first calls pay for allocations and kernel choices
    first = [_user(_picture(), QUESTION)]
    sequence, ttft = _timed(lambda: start(first))
    decode_tok_s = decode([sequence])
    follow_up = first + [{"role": "assistant", "content": sequence.text()}, _user(FOLLOW_UP)]
    second, followup_ttft = _timed(lambda: start(follow_up))
    stories = [[_user(f"Tell me story number {i} about a lighthouse keeper.")] for i in range(STREAMS + 1)]
    one = decode([start(stories[0])])
    together = decode([start(s) for s in stories[1:]])
    return dict(decode_tok_s=decode_tok_s, ttft_s=ttft, followup_ttft_s=followup_ttft,
                streams4_speedup=together / one, prompt_tokens=sequence.prompt_tokens,
                followup_prefilled_tokens=second.prompt_tokens - second.reused_tokens)


def bench(spec: str, *, device: torch.device, dtypes: list[str], new_tokens: int = 16) -> list[BenchResult]:
    """Load `spec` once in fp32 (the baseline), then convert it to each dtype in turn (widest first)."""
    from omniphi import presets
    from omniphi.runtime.assistant import Assistant

    _progress(f"loading {spec} (float32)")
    loaded = presets.load(spec, dtype=torch.float32)
    loaded.model.to(device)
    bandwidth = measure_bandwidth(device)
    _progress(f"bandwidth {bandwidth:.1f} GB/s; baseline: transformers generate, float32")
    baseline_decode, baseline_ttft = baseline(loaded, new_tokens, device)
    _progress(f"baseline: decode {baseline_decode:.2f} tok/s, TTFT {baseline_ttft:.2f} s")
    results = []
    for dtype in sorted(dict.fromkeys(dtypes), key=lambda d: -getattr(torch, d).itemsize):
        _progress(f"{dtype}: the Assistant")
        loaded.model.to(getattr(torch, dtype))
        assistant = Assistant(loaded)
        numbers = measure(assistant, new_tokens, device)
        bytes_per_token = weight_bytes_per_token(loaded.model.language_model)
        results.append(BenchResult(
            config=f"{dtype}" + ("" if device.type == "cpu" else f"@{device}"),
            decode_bound_tok_s=bandwidth * 1e9 / bytes_per_token, baseline_decode_tok_s=baseline_decode,
            baseline_ttft_s=baseline_ttft, bandwidth_gb_s=bandwidth, weight_bytes_per_token=bytes_per_token,
            new_tokens=new_tokens, **numbers))
        del assistant
    order = {d: i for i, d in enumerate(dtypes)}
    return sorted(results, key=lambda r: order.get(r.config.split("@")[0], 0))
