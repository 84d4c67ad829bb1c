"""The engine on its own: ordering, one-at-a-time use of the model, backpressure, timeouts,
cancellation, shutdown, sync and async consumers."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from omniphi.chat import Done, GenerationSettings, Token, Transcript
from omniphi.serve.engine import ChatRequest, Engine, EngineStopped, QueueFull, RequestTimedOut, TranscriptionRequest
from tests.serve.conftest import wait_until
from tests.serve.fake_assistant import ANSWER, TRANSCRIPT, FakeAssistant


def run_coroutine(coroutine):
    """asyncio.run in a thread of its own: Playwright's sync API (browser tests in the same pytest
    process) keeps an event loop running in the main thread, where asyncio.run refuses to start."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def chat(text="hi", max_new_tokens=256, audio=None):
    content = [{"type": "text", "text": text}]
    if audio is not None:
        content.append({"type": "audio", "audio": audio})
    return ChatRequest([{"role": "user", "content": content}], GenerationSettings(max_new_tokens=max_new_tokens))


@pytest.fixture
def engines():
    made = []

    def make(assistant=None, **kwargs):
        engine = Engine(assistant or FakeAssistant(), **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


def test_events_and_result(engines):
    engine = engines()
    audio = np.zeros(16000, np.float32)
    job = engine.submit(chat(audio=audio))
    events = list(job)
    assert isinstance(events[0], Transcript) and events[0].text == TRANSCRIPT
    assert "".join(e.text for e in events if isinstance(e, Token)) == ANSWER
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"
    assert job.result.text == ANSWER and job.result.transcripts == [TRANSCRIPT]
    assert job.result.finish_reason == "stop" and job.finished
    assert list(job) == []  # exhausted stays exhausted


def test_async_consumer(engines):
    engine = engines(FakeAssistant(token_delay=0.002))

    async def main():
        job = engine.submit(chat())
        texts = [e.text async for e in job if isinstance(e, Token)]
        result = await engine.submit(TranscriptionRequest(np.zeros(8000, np.float32))).wait()
        return texts, result

    texts, result = run_coroutine(main())
    assert "".join(texts) == ANSWER
    assert result.transcripts == [TRANSCRIPT] and result.finish_reason == "stop"


def test_one_request_at_a_time_in_arrival_order(engines):
    fake = FakeAssistant(token_delay=0.002)
    engine = engines(fake, max_queue=50)
    jobs = []
    lock = threading.Lock()

    def client(i):
        request = TranscriptionRequest(np.zeros(1600, np.float32)) if i % 3 == 0 else chat(f"q{i}")
        with lock:  # arrival order = submission order
            jobs.append((i, engine.submit(request)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, job in jobs:
        list(job)
    assert fake.max_active == 1  # never two calls into the model at once
    asked = [c["messages"][0]["content"][0]["text"] if c["kind"] == "stream" else "T" for c in fake.calls]
    expected = ["T" if i % 3 == 0 else f"q{i}" for i, _ in jobs]
    assert asked == expected


def test_queue_full_and_cancelled_waiters_free_their_slot(engines):
    engine = engines(FakeAssistant(token_delay=0.2), max_queue=2)  # slow: still running while we check
    running = engine.submit(chat())
    assert wait_until(lambda: engine._running is running)
    waiting = [engine.submit(chat()), engine.submit(chat())]
    with pytest.raises(QueueFull) as info:
        engine.submit(chat())
    assert info.value.retry_after >= 1
    with pytest.raises(QueueFull):
        engine.reserve()
    waiting[0].cancel()
    assert engine.waiting == 1
    engine.submit(chat(max_new_tokens=1))  # the cancelled one's slot is free again
    running.cancel()


def test_reservation_holds_a_slot_until_used_or_released(engines):
    engine = engines(FakeAssistant(token_delay=0.2), max_queue=1)
    running = engine.submit(chat())
    assert wait_until(lambda: engine._running is running)
    with engine.reserve() as slot:
        assert engine.waiting == 1
        with pytest.raises(QueueFull):
            engine.submit(chat())
        job = slot.submit(chat(max_new_tokens=2))
    assert engine.waiting == 1  # now as a queued job, not a reservation
    with pytest.raises(QueueFull):
        engine.reserve()
    running.cancel()
    assert "".join(e.text for e in job if isinstance(e, Token)) == "The capital"


def test_unused_reservation_is_released(engines):
    engine = engines(FakeAssistant(token_delay=0.2), max_queue=1)
    running = engine.submit(chat())
    assert wait_until(lambda: engine._running is running)
    with pytest.raises(RuntimeError):
        with engine.reserve():
            raise RuntimeError("storing failed")
    assert engine.waiting == 0
    engine.submit(chat(max_new_tokens=1))
    running.cancel()


def test_cancel_mid_generation_stops_the_model_and_keeps_the_partial_answer(engines):
    fake = FakeAssistant(token_delay=0.01)
    engine = engines(fake)
    finished = []
    job = engine.submit(chat(), on_finish=lambda r: finished.append(r) or "stored")
    for event in job:
        if isinstance(event, Token) and event.text == " France":
            job.cancel()
    assert job.result.done.finish_reason == "cancelled"
    assert job.result.text.startswith("The capital of France") and len(job.result.text) < len(ANSWER)
    assert fake.cancelled == 1
    assert finished == [job.result] and job.finish_value == "stored"


def test_cancelled_while_waiting_never_reaches_the_model(engines):
    fake = FakeAssistant(token_delay=0.02)
    engine = engines(fake)
    running = engine.submit(chat("first"))
    finished = []
    queued = engine.submit(chat("second"), on_finish=finished.append)
    queued.cancel()
    list(running)
    assert wait_until(lambda: queued.finished)
    assert [c["messages"][0]["content"][0]["text"] for c in fake.calls] == ["first"]
    assert finished[0].finish_reason == "cancelled" and finished[0].text == ""


def test_timeout_cancels_generation(engines):
    fake = FakeAssistant(token_delay=0.05)
    engine = engines(fake, request_timeout_s=0.2)
    finished = []
    job = engine.submit(chat(), on_finish=finished.append)
    started = time.monotonic()
    with pytest.raises(RequestTimedOut):
        for _ in job:
            pass
    assert time.monotonic() - started < 2
    assert fake.cancelled == 1
    assert finished[0].finish_reason == "error" and isinstance(finished[0].error, RequestTimedOut)
    assert 0 < len(finished[0].text) < len(ANSWER)  # the partial answer is still there


def test_timeout_while_waiting(engines):
    fake = FakeAssistant(token_delay=0.05)
    engine = engines(fake, request_timeout_s=0.3)
    first = engine.submit(chat())
    second = engine.submit(chat("never"))
    for job in (first, second):
        with pytest.raises(RequestTimedOut):
            list(job)
    assert all(c["messages"][0]["content"][0]["text"] != "never" for c in fake.calls)


def test_consumer_gives_up_on_a_model_that_ignores_cancel(engines):
    fake = FakeAssistant("a b c", token_delay=0.3, ignore_cancel=True)
    engine = engines(fake, request_timeout_s=0.1, stall_grace_s=0.1)
    job = engine.submit(chat())

    async def consume():
        return [e async for e in job]

    started = time.monotonic()
    with pytest.raises(RequestTimedOut):
        run_coroutine(consume())
    assert time.monotonic() - started < 0.6


def test_model_error_reaches_the_consumer_after_the_tokens(engines):
    engine = engines(FakeAssistant(fail_after=2))
    job = engine.submit(chat())
    got = []
    with pytest.raises(RuntimeError, match="fake model failure"):
        for event in job:
            got.append(event)
    assert [e.text for e in got] == ["The", " capital"]
    assert job.result.finish_reason == "error"
    assert list(engine.submit(chat(max_new_tokens=1)))[-1].finish_reason == "length"  # the worker survived


def test_stop_fails_running_and_waiting_jobs_and_refuses_new_ones(engines):
    engine = engines(FakeAssistant(token_delay=0.02))
    running = engine.submit(chat())
    assert wait_until(lambda: engine._running is running)
    waiting = engine.submit(chat())
    engine.stop()
    for job in (running, waiting):
        with pytest.raises(EngineStopped):
            list(job)
    assert running.result.done.finish_reason == "cancelled"  # the model was told to stop
    with pytest.raises(EngineStopped):
        engine.submit(chat())
    with pytest.raises(EngineStopped):
        engine.reserve()
    assert not engine.running
