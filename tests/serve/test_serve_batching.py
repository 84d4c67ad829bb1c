"""The engine with the real Assistant (random tiny model): concurrent requests decode in one batch,
each as it would alone, with its own settings; a cancelled member leaves within a token."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from omniphi.chat import GenerationSettings
from omniphi.runtime.assistant import Assistant
from omniphi.runtime.decoding import DecodeBatch
from omniphi.serve.engine import ChatRequest, Engine, QueueFull
from tests.conftest import tone


@pytest.fixture
def assistant(tiny):
    return Assistant(tiny)


@pytest.fixture
def batch_sizes(monkeypatch):
    """Records the batch size of every decode step."""
    sizes: list[int] = []
    original = DecodeBatch.step

    def step(self):
        sizes.append(len(self))
        return original(self)

    monkeypatch.setattr(DecodeBatch, "step", step)
    return sizes


def request(*parts, **settings) -> ChatRequest:
    content = [{"type": "text", "text": p} if isinstance(p, str) else
               {"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "audio", "audio": p}
               for p in parts]
    return ChatRequest([{"role": "user", "content": content}], GenerationSettings(**settings))


def submit_together(engine: Engine, requests: list[ChatRequest]):
    with engine._cond:  # the worker cannot take any of them before all are queued
        return [engine.submit(r) for r in requests]


def answer_together(assistant, requests: list[ChatRequest]):
    """Submit all at once to a batching engine, wait for every answer, stop the engine: the jobs."""
    engine = Engine(assistant, max_batch=4)
    try:
        jobs = submit_together(engine, requests)
        for job in jobs:
            list(job)
    finally:
        engine.stop()
    return jobs


def test_concurrent_greedy_requests_decode_together_and_answer_as_alone(tiny, assistant, batch_sizes):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    requests = [request("Hi!", max_new_tokens=12), request(image, "What is this?", max_new_tokens=9),
                request(tone(0.6), "Listen.", max_new_tokens=14), request("Count to ten.", max_new_tokens=5)]
    alone = [Assistant(tiny).complete(r.messages, r.settings) for r in requests]
    jobs = answer_together(assistant, requests)
    assert [j.result.text for j in jobs] == [r.text for r in alone]
    assert [j.result.done.completion_tokens for j in jobs] == [r.completion_tokens for r in alone]
    assert max(batch_sizes) == 4


def test_each_member_samples_with_its_own_settings(tiny, assistant, batch_sizes):
    requests = [request("Say something.", max_new_tokens=10),
                request("Say something.", max_new_tokens=10, temperature=1.3, seed=11),
                request("Say something.", max_new_tokens=10, temperature=0.8, top_p=0.6, seed=5),
                request("Say something.", max_new_tokens=10, stop=["e"])]
    alone = [Assistant(tiny).complete(r.messages, r.settings).text for r in requests]
    jobs = answer_together(assistant, requests)
    assert [j.result.text for j in jobs] == alone
    assert alone[0] != alone[1]
    assert "e" not in alone[3]
    assert max(batch_sizes) >= 2


def test_a_cancelled_member_stops_within_a_token_and_the_others_continue(tiny, assistant, monkeypatch):
    requests = [request(f"Tell me story number {i}.", max_new_tokens=16) for i in range(3)]
    alone = [Assistant(tiny).complete(r.messages, r.settings) for r in requests]
    tokens_at_cancel = {}
    original = DecodeBatch.step

    def step(self):
        finished = original(self)
        member = next((s for s in self.members if s.cancel is jobs[1].cancel_event), None)
        if member is not None and len(member.token_ids) == 3 and not tokens_at_cancel:
            tokens_at_cancel["n"] = len(member.token_ids)
            jobs[1].cancel()
        return finished

    monkeypatch.setattr(DecodeBatch, "step", step)
    engine = Engine(assistant, max_batch=4)
    try:
        jobs = submit_together(engine, requests)
        for job in jobs:
            list(job)
    finally:
        engine.stop()
    assert jobs[1].result.finish_reason == "cancelled"
    assert jobs[1].result.done.completion_tokens == tokens_at_cancel["n"]
    assert [jobs[i].result.text for i in (0, 2)] == [alone[i].text for i in (0, 2)]


def test_the_queue_bound_counts_running_members_and_waiting_requests(assistant):
    engine = Engine(assistant, max_queue=1, max_batch=2)
    try:
        with engine._cond:
            jobs = [engine.submit(request("Hi", max_new_tokens=200)) for _ in range(3)]
            with pytest.raises(QueueFull):
                engine.submit(request("Hi"))
        for job in jobs:
            job.cancel()
            list(job)
    finally:
        engine.stop()
