"""What `omniphi.runtime.fast_ops` buys per decode step of a Phi-2-sized LLM on this CPU.

Builds a random `PhiForCausalLM` at Phi-2's sizes (hidden 2560, 32 heads of 80 dims, 32 of them
rotary, intermediate 10240; `--layers` of them), prefills a prompt as long as the README's bench
prompt (one image + a question, 623 tokens), then times batch-1 decode steps with transformers' own
modules and with the same model after `install_fast_ops`, in one run, for each dtype. It also checks
that both give the same greedy tokens (rounding may differ; the tokens of a random model rarely do):

    nice -n 10 .venv/bin/python bench/decode_ops.py [--layers 32] [--dtype bfloat16,float32] [--steps 16] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import DynamicCache, PhiConfig, PhiForCausalLM

from omniphi.runtime.fast_ops import install_fast_ops


def phi2_sized(layers: int) -> PhiForCausalLM:
    config = PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4,
                       max_position_embeddings=2048, attn_implementation="sdpa")
    torch.manual_seed(0)
    return PhiForCausalLM(config).eval()


@torch.inference_mode()
def decode(model: PhiForCausalLM, prompt: torch.Tensor, steps: int) -> tuple[list[float], list[int]]:
    """Seconds of each decode step after the prefill, and the greedy tokens."""
    cache = DynamicCache()
    logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits
    token = logits[:, -1:].argmax(-1)
    seconds, tokens = [], []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(input_ids=token, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        seconds.append(time.perf_counter() - start)
        tokens.append(int(token))
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16,float32")
    parser.add_argument("--prompt-tokens", type=int, default=623)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = phi2_sized(args.layers)
    prompt = torch.randint(0, base.config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    results = []
    for dtype_name in args.dtype.split(","):
        stock = base.to(getattr(torch, dtype_name))
        fast = copy.deepcopy(stock)
        install_fast_ops(fast)
        decode(stock, prompt[:, :32], 2)  # warm-up: first calls allocate and pick kernels
        decode(fast, prompt[:, :32], 2)
        stock_seconds, stock_tokens = decode(stock, prompt, args.steps)
        fast_seconds, fast_tokens = decode(fast, prompt, args.steps)
        stock_ms, fast_ms = (1000 * statistics.median(s) for s in (stock_seconds, fast_seconds))
        results.append({"dtype": dtype_name, "layers": args.layers, "prompt_tokens": args.prompt_tokens,
                        "transformers_ms_per_step": round(stock_ms, 1), "fast_ops_ms_per_step": round(fast_ms, 1),
                        "speedup": round(stock_ms / fast_ms, 2), "same_greedy_tokens": stock_tokens == fast_tokens})
        del fast
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"Phi-2-sized, {args.layers} layers, {args.prompt_tokens}-token prompt, median of {args.steps} decode steps")
    for row in results:
        print(f"{row['dtype']:>9}: transformers {row['transformers_ms_per_step']} ms/step, "
              f"fast_ops {row['fast_ops_ms_per_step']} ms/step ({row['speedup']}x), "
              f"same greedy tokens: {row['same_greedy_tokens']}")


if __name__ == "__main__":
    main()
