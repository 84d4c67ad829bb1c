"""omniphi's own server against vLLM (the omniphi.vllm plugin) on the same model directory, and
omniphi's server in front of that vLLM server (`omniphi serve --engine vllm`).

The servers are started here, one after the other, and measured through the same OpenAI client
requests: time to first token and decode speed of one stream (median of --repeats), then the
aggregate decode throughput of --streams concurrent streams. Greedy, same prompt, same max_tokens.

    .venv-vllm/bin/python bench/serving_engines.py --model-dir runs/starter-merged

(omniphi's server runs from .venv's `omniphi`, vLLM from .venv-vllm; `make setup vllm-venv` creates both.)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Tell me about the history of Paris."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: Path, timeout: float = 1200) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not start in {timeout} s: see {log}")


def one_stream(client: openai.OpenAI, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from first to last token, completion tokens)."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first - started, last - first, tokens


def measure(port: int, max_tokens: int, repeats: int, streams: int) -> dict[str, float]:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=1200)
    model = client.models.list().data[0].id
    one_stream(client, model, 4)  # warm-up
    singles = [one_stream(client, model, max_tokens) for _ in range(repeats)]
    ttft = statistics.median(s[0] for s in singles)
    decode = statistics.median((s[2] - 1) / s[1] for s in singles if s[1] > 0)
    results: list[tuple[float, float, int]] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda: results.append(one_stream(client, model, max_tokens))) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"ttft_s": ttft, "decode_tok_s": decode, "tokens": singles[0][2],
            f"{streams}_stream_tok_s": sum(r[2] for r in results) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--omniphi-cli", default=str(ROOT / ".venv" / "bin" / "omniphi"))
    parser.add_argument("--vllm-python", default=sys.executable)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    engines = {
        "omniphi": lambda port: [args.omniphi_cli, "serve", "--model", args.model_dir, "--port", str(port),
                                 "--data-dir", tempfile.mkdtemp(prefix="omniphi-bench-")],
        "vllm": lambda port: [args.vllm_python, "-m", "omniphi.vllm", "serve", args.model_dir, "--port", str(port),
                              "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"],
    }
    for name, command in engines.items():
        port = free_port()
        process = start(command(port), port, Path(f"/tmp/bench-{name}.log"))
        try:
            print(name, {k: round(v, 2) for k, v in measure(port, args.max_tokens, args.repeats, args.streams).items()},
                  flush=True)
            if name == "vllm":  # omniphi's server in front of this vLLM server (omniphi serve --engine vllm)
                front_port = free_port()
                front = start([args.omniphi_cli, "serve", "--engine", "vllm", "--vllm-url",
                               f"http://127.0.0.1:{port}/v1", "--model", args.model_dir, "--port", str(front_port),
                               "--data-dir", tempfile.mkdtemp(prefix="omniphi-bench-")],
                              front_port, Path("/tmp/bench-omniphi-on-vllm.log"))
                try:
                    print("omniphi --engine vllm", {k: round(v, 2) for k, v in
                                                    measure(front_port, args.max_tokens, args.repeats,
                                                            args.streams).items()}, flush=True)
                finally:
                    front.terminate()
                    front.wait(timeout=120)
        finally:
            process.terminate()
            process.wait(timeout=120)


if __name__ == "__main__":
    main()
