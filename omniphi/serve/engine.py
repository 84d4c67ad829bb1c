"""The serving engine: owns the Assistant and decides how work runs.

The Assistant (a model) is not thread-safe, so one worker thread runs every request — chat
generations and transcriptions alike — one at a time, in arrival order. The HTTP layer only
sees `reserve()` / `submit()` and the `Job` it gets back (an async- or sync-iterable of
`omniphi.chat` events), so batched decode, KV-cache reuse across turns or an embedding cache
can replace `_run` later without touching the API or the page.

Backpressure: a bounded number of requests may wait; beyond that `QueueFull` (→ 429 with
Retry-After). Each request has a deadline counted from submission (queue time included):
past it the generation is cancelled and the job ends with `RequestTimedOut`. A consumer that
goes away calls `Job.cancel()`, which sets the `cancel` Event the Assistant polls every token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union

import numpy as np

from omniphi.chat import AudioMode, Conversation, Done, Event, GenerationSettings, Token, Transcript

log = logging.getLogger("omniphi.serve.engine")


# --------------------------------------------------------------------------- errors


class EngineError(Exception):
    """Base of the engine's own failures (mapped to HTTP statuses in errors.py)."""


class QueueFull(EngineError):
    def __init__(self, retry_after: int):
        super().__init__("The server is busy: too many requests are waiting. Retry shortly.")
        self.retry_after = retry_after


class EngineStopped(EngineError):
    def __init__(self, message: str = "The model engine is not running."):
        super().__init__(message)


class RequestTimedOut(EngineError):
    def __init__(self, seconds: float):
        super().__init__(f"The request took longer than the server's limit of {seconds:g} s.")
        self.seconds = seconds


# --------------------------------------------------------------------------- requests


@dataclass
class ChatRequest:
    messages: Conversation
    settings: GenerationSettings
    audio_mode: AudioMode = "native"


@dataclass
class TranscriptionRequest:
    audio: np.ndarray  # 16 kHz mono float32


Request = Union[ChatRequest, TranscriptionRequest]


@dataclass
class JobResult:
    """Everything a finished job produced, also when it was cancelled or failed half-way."""

    text: str = ""
    transcripts: list[str] = field(default_factory=list)
    done: Done | None = None
    error: BaseException | None = None

    @property
    def finish_reason(self) -> str:
        if self.error is not None:
            return "error"
        return self.done.finish_reason if self.done else "error"


_END = object()


class Job:
    """One request's handle: iterate it (async or sync) for Transcript*/Token*/Done events.

    After the last event, a failed job raises its error instead of yielding Done. `on_finish`
    runs in the engine's thread once the job ends, whatever the consumer does (also when it has
    disconnected), before the consumer sees the end; its return value is `finish_value`."""

    def __init__(self, engine: "Engine", request: Request, on_finish: Callable[[JobResult], Any] | None,
                 deadline: float):
        self.engine = engine
        self.request = request
        self.cancel_event = threading.Event()
        self.deadline = deadline  # time.monotonic()
        self.result = JobResult()
        self.finish_value: Any = None
        self._on_finish = on_finish
        self._abort: EngineError | None = None  # why the engine (not the client) cancelled it
        self._cond = threading.Condition()
        self._events: deque = deque()
        self._finished = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """The client went away: stop generating (within one token), or skip it if still queued."""
        self.cancel_event.set()
        self.engine._wake()

    # -- producer side (engine thread) -------------------------------------------------------
    def _push(self, item) -> None:
        with self._cond:
            self._events.append(item)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: its consumer is gone
                pass

    def _finish(self) -> None:
        result = self.result
        if result.error is None and self._abort is not None and (result.done is None or result.done.finish_reason == "cancelled"):
            result.error = self._abort
        if result.error is None and result.done is None:
            result.error = RuntimeError("the model stopped without finishing its answer")
        if self._on_finish is not None:
            try:
                self.finish_value = self._on_finish(result)
            except BaseException as error:  # noqa: BLE001 — reported to the consumer, not lost
                log.exception("on_finish failed")
                if result.error is None:
                    result.error = error
        if result.error is None:
            self._push(result.done)
        self._finished = True
        self._push(_END)

    # -- consumer side ------------------------------------------------------------------------
    def _take(self):
        """The next item if one is ready, else None (caller must wait)."""
        if self._events:
            item = self._events.popleft()
            if item is _END:
                self._events.appendleft(_END)  # stays at the end for repeated reads
                if self.result.error is not None:
                    raise self.result.error
                raise _Exhausted
            return item
        return None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        while True:
            with self._cond:
                try:
                    item = self._take()
                except _Exhausted:
                    raise StopAsyncIteration from None
                if item is not None:
                    return item
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                self._waiters.append((loop, future))
            # Normally the engine ends the job at its deadline; this bounds the wait if the model
            # ignores `cancel` (a hung worker), so no HTTP request waits forever.
            remaining = self.deadline + self.engine.stall_grace_s - time.monotonic()
            try:
                await asyncio.wait_for(future, timeout=max(remaining, 0.0))
            except asyncio.TimeoutError:
                self.cancel()
                raise RequestTimedOut(self.engine.request_timeout_s) from None

    def __iter__(self) -> Iterator[Event]:
        while True:
            with self._cond:
                try:
                    item = self._take()
                except _Exhausted:
                    return
                if item is None:
                    remaining = self.deadline + self.engine.stall_grace_s - time.monotonic()
                    if remaining <= 0 or not self._cond.wait(timeout=remaining):
                        if not self._events:
                            self.cancel()
                            raise RequestTimedOut(self.engine.request_timeout_s)
                    continue
            yield item

    async def wait(self) -> JobResult:
        """Drain the events and return the result (raises the job's error)."""
        async for _ in self:
            pass
        return self.result


class _Exhausted(Exception):
    pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Reservation:
    """A held queue slot: lets the caller do durable work (store the user's message) knowing the
    request will be accepted. Unused slots are released on exit."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.used = False

    def submit(self, request: Request, *, on_finish: Callable[[JobResult], Any] | None = None) -> Job:
        if self.used:
            raise RuntimeError("reservation already used")
        self.used = True
        return self.engine._enqueue(request, on_finish, reserved=True)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        if not self.used:
            self.used = True
            self.engine._release()


# --------------------------------------------------------------------------- engine


class Engine:
    def __init__(self, assistant, max_queue: int = 8, request_timeout_s: float = 300.0, *,
                 stall_grace_s: float = 30.0):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.assistant = assistant
        self.model_name: str = getattr(assistant, "name", "omniphi")
        self.max_queue = max_queue
        self.request_timeout_s = float(request_timeout_s)
        self.stall_grace_s = float(stall_grace_s)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._reserved = 0
        self._running: Job | None = None
        self._stopped = False
        self._avg_seconds = 2.0  # moving average of job durations, for Retry-After
        self._thread = threading.Thread(target=self._work, name="omniphi-engine", daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Requests accepted but not started (reservations included)."""
        with self._cond:
            return self._waiting()

    def reserve(self) -> Reservation:
        """Hold a slot or raise QueueFull / EngineStopped."""
        with self._cond:
            self._check_capacity()
            self._reserved += 1
        return Reservation(self)

    def submit(self, request: Request, *, on_finish: Callable[[JobResult], Any] | None = None) -> Job:
        """Queue a request; raises QueueFull when `max_queue` requests already wait."""
        return self._enqueue(request, on_finish, reserved=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new work, cancel the running job, fail the waiting ones (EngineStopped)."""
        with self._cond:
            self._stopped = True
            pending = [job for job in self._queue]
            self._queue.clear()
            running = self._running
            self._cond.notify_all()
        for job in pending:
            job.result.error = EngineStopped("The server is shutting down.")
            job._finish()
        if running is not None:
            running._abort = EngineStopped("The server is shutting down.")
            running.cancel_event.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- internals ----------------------------------------------------------------------------
    def _waiting(self) -> int:
        return sum(1 for job in self._queue if not job.cancel_event.is_set()) + self._reserved

    def _check_capacity(self) -> None:
        if self._stopped or not self._thread.is_alive():
            raise EngineStopped()
        in_system = self._waiting() + (1 if self._running is not None else 0)
        if in_system >= self.max_queue + 1:  # one running + max_queue waiting
            retry = math.ceil(self._avg_seconds * max(1, self._waiting()) / 2)
            raise QueueFull(retry_after=min(max(retry, 1), 60))

    def _release(self) -> None:
        with self._cond:
            self._reserved -= 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _enqueue(self, request: Request, on_finish, reserved: bool) -> Job:
        with self._cond:
            if reserved:
                self._reserved -= 1
                if self._stopped:
                    raise EngineStopped()
            else:
                self._check_capacity()
            job = Job(self, request, on_finish, time.monotonic() + self.request_timeout_s)
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._queue.popleft()
                self._running = job
            started = time.monotonic()
            try:
                self._run(job)
            except BaseException:  # noqa: BLE001 — the worker must survive anything a job does
                log.exception("engine worker: unexpected failure")
            finally:
                with self._cond:
                    self._running = None
                    self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.monotonic() - started)

    def _run(self, job: Job) -> None:
        result = job.result
        now = time.monotonic()
        if job.cancel_event.is_set():  # the client left while it waited: do no work
            result.done = Done("cancelled", 0, 0, 0.0)
            job._finish()
            return
        if now >= job.deadline:
            job._abort = RequestTimedOut(self.request_timeout_s)
            result.done = Done("cancelled", 0, 0, 0.0)
            job._finish()
            return

        def on_deadline():
            job._abort = RequestTimedOut(self.request_timeout_s)
            job.cancel_event.set()

        # A timer, not a check between tokens: prefill or transcription can run long without one.
        timer = threading.Timer(job.deadline - now, on_deadline)
        timer.daemon = True
        timer.start()
        text: list[str] = []
        try:
            request = job.request
            if isinstance(request, TranscriptionRequest):
                started = time.perf_counter()
                transcript = self.assistant.transcribe(request.audio)
                result.transcripts.append(transcript)
                job._push(Transcript(0, transcript))
                result.done = Done("stop", 0, 0, time.perf_counter() - started)
            else:
                for event in self.assistant.stream(request.messages, request.settings,
                                                   audio_mode=request.audio_mode, cancel=job.cancel_event):
                    if isinstance(event, Done):
                        result.done = event  # pushed by _finish, after on_finish has run
                        continue
                    if isinstance(event, Token):
                        text.append(event.text)
                    elif isinstance(event, Transcript):
                        result.transcripts.append(event.text)
                    job._push(event)
        except BaseException as error:  # noqa: BLE001 — becomes the consumer's error
            result.error = error
        finally:
            timer.cancel()
            result.text = "".join(text)
        job._finish()
