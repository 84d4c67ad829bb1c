"""Synthetic text corpora from any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp's
server, omniphi's own server, OpenAI itself).

Each prompt is asked ``n_per_prompt`` times; every answer is appended to a JSONL file as
``{"text", "prompt", "model"}`` and flushed at once, so an interrupted run loses at most the
requests in flight. Re-running the same command resumes: answers already in the file count
towards their prompt's quota (a torn last line from a crash is cut off first).

429 and 5xx answers, timeouts and refused connections are retried with exponential backoff
(honouring ``Retry-After``); any other HTTP error (bad model name, bad key) stops the run with
one line, because every later request would fail the same way.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_DELAY = 60.0


class GenerateError(RuntimeError):
    """A failure that ends the run; its message is one line for the user."""


def chat_url(endpoint: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/chat/completions``."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint must be an http(s) URL, not {endpoint!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-blank line; duplicates are dropped (the quota is per prompt text)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"prompts file not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"prompts file is not UTF-8 text: {path}") from None
    prompts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def done_counts(out: Path) -> Counter:
    """Answers already written per prompt; truncates a torn (newline-less) last line."""
    counts: Counter = Counter()
    if not out.exists():
        return counts
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: dropping an incomplete last line (interrupted run)", out)
        with open(out, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            counts[row["prompt"]] += 1
    return counts


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") if isinstance(err, dict) else err
        if not msg and isinstance(body, dict):
            msg = body.get("detail")
        text = str(msg) if msg else response.text
    except ValueError:
        text = response.text
    return " ".join(text.split())[:300] or response.reason_phrase


@dataclass
class ChatClient:
    endpoint: str
    model: str
    api_key: str | None = None
    temperature: float = 1.0
    max_tokens: int = 512
    system: str | None = None
    max_retries: int = 6
    backoff: float = 1.0
    timeout: float = 300.0
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self):
        self.url = chat_url(self.endpoint)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.Client(headers=headers, timeout=self.timeout, transport=self.transport)

    def close(self) -> None:
        self.client.close()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            try:  # the server knows best when it will have capacity again
                return min(MAX_DELAY, max(0.0, float(response.headers["retry-after"])))
            except (KeyError, ValueError):
                pass
        delay = self.backoff * (2**attempt)
        # Jitter keeps concurrent workers from retrying in lock-step.
        return min(MAX_DELAY, delay * random.uniform(1.0, 1.25))

    def complete(self, prompt: str) -> tuple[str, str]:
        """(answer text, model name reported by the server)."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as exc:
                what = f"cannot reach {self.url}: {type(exc).__name__}: {' '.join(str(exc).split()) or 'no detail'}"
                if last:
                    raise GenerateError(what) from None
                logger.warning("%s; retrying", what)
                self.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUS and not last:
                logger.warning("HTTP %d from %s; retrying", response.status_code, self.url)
                self.sleep(self._delay(attempt, response))
                continue
            if response.status_code != 200:
                suffix = f" after {self.max_retries + 1} attempts" if response.status_code in RETRY_STATUS else ""
                raise GenerateError(f"HTTP {response.status_code} from {self.url}{suffix}: {_error_message(response)}")
            try:
                data = response.json()
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise GenerateError(f"unexpected response from {self.url}: {response.text[:200]!r}") from None
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return (content or "").strip(), str(data.get("model") or self.model)
        raise AssertionError("unreachable")


def generate_corpus(
    client: ChatClient,
    prompts: list[str],
    out: str | os.PathLike,
    n_per_prompt: int = 1,
    concurrency: int = 1,
) -> dict[str, int]:
    """Ask for the missing answers and append them to ``out``. Returns counts:
    ``written``, ``already`` (found in the file), ``empty`` (blank answers, not written)."""
    if n_per_prompt < 1 or concurrency < 1:
        raise ValueError("n_per_prompt and concurrency must be at least 1")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_counts(out)
    jobs = [p for p in prompts for _ in range(max(0, n_per_prompt - done[p]))]
    stats = {"written": 0, "already": sum(min(done[p], n_per_prompt) for p in prompts), "empty": 0}
    if not jobs:
        return stats

    with open(out, "a", encoding="utf-8") as f, ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {}
        queue = iter(jobs)
        error: GenerateError | None = None

        def submit_next() -> None:
            prompt = next(queue, None)
            if prompt is not None:
                pending[pool.submit(client.complete, prompt)] = prompt

        for _ in range(2 * concurrency):  # a small window, not 100k futures at once
            submit_next()
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                prompt = pending.pop(fut)
                try:
                    text, model = fut.result()
                except GenerateError as exc:
                    error = error or exc  # let requests in flight finish and be kept
                    continue
                if text:
                    f.write(json.dumps({"text": text, "prompt": prompt, "model": model}, ensure_ascii=False) + "\n")
                    f.flush()
                    stats["written"] += 1
                else:
                    stats["empty"] += 1
                if error is None:
                    submit_next()
        if error is not None:
            raise error
    return stats
