"""The serving engine: owns the Assistant and decides how work runs.

The Assistant (a model) is not thread-safe, so one worker thread drives it. Requests start in
arrival order. With an Assistant that exposes its decoding steps (`begin`, `prefill`,
`new_batch`), up to `max_batch` chat requests decode together: each new one is prefilled on its
own (reusing the Assistant's cached prefixes) and joins the running batch at the next step, with
its own sampling settings, stop strings and token budget; a member that finishes or is cancelled
leaves at the step it happens. A transcription, or an assistant that only offers `stream` (a
test double), runs one at a time. The HTTP layer only sees `reserve()` / `submit()` and the
`Job` it gets back (an async- or sync-iterable of `omniphi.chat` events).

Backpressure: besides the running ones, a bounded number of requests may wait; beyond that
`QueueFull` (→ 429 with Retry-After). Each request has a deadline counted from submission (queue time included):
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
    prompt: str | None = None  # Whisper's prompt; None: the model's own


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
        self._text: list[str] = []  # the answer so far (engine thread)
        self._timer: threading.Timer | None = None  # fires at the deadline (engine thread)
        self._started = 0.0  # time.monotonic() when the engine took it up
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
                 stall_grace_s: float = 30.0, max_batch: int = 4):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.assistant = assistant
        self.batching = all(callable(getattr(assistant, name, None)) for name in ("begin", "prefill", "new_batch"))
        self.max_batch = max_batch if self.batching else 1
        self.model_name: str = getattr(assistant, "name", "omniphi")
        self.max_queue = max_queue
        self.request_timeout_s = float(request_timeout_s)
        self.stall_grace_s = float(stall_grace_s)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._reserved = 0
        self._active: list[Job] = []  # started, not finished, in start order
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
        """Refuse new work, cancel the running jobs, fail the waiting ones (EngineStopped)."""
        with self._cond:
            self._stopped = True
            pending = [job for job in self._queue]
            self._queue.clear()
            running = list(self._active)
            self._cond.notify_all()
        for job in pending:
            job.result.error = EngineStopped("The server is shutting down.")
            job._finish()
        for job in running:
            job._abort = EngineStopped("The server is shutting down.")
            job.cancel_event.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- internals ----------------------------------------------------------------------------
    @property
    def _running(self) -> Job | None:
        """The oldest running job, if any."""
        active = self._active
        return active[0] if active else None

    def _waiting(self) -> int:
        return sum(1 for job in self._queue if not job.cancel_event.is_set()) + self._reserved

    def _check_capacity(self) -> None:
        if self._stopped or not self._thread.is_alive():
            raise EngineStopped()
        in_system = self._waiting() + len(self._active)
        if in_system >= self.max_queue + self.max_batch:  # up to max_batch running + max_queue waiting
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
        if self.batching:
            self._work_batched()
            return
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._queue.popleft()
                self._active.append(job)
            try:
                if self._start(job):
                    self._run_stream(job)
            except BaseException:  # noqa: BLE001 — the worker must survive anything a job does
                log.exception("engine worker: unexpected failure")

    def _work_batched(self) -> None:
        batch = self.assistant.new_batch()
        members: dict[int, tuple[Any, Job]] = {}  # id(sequence) → (sequence, job)
        while True:
            with self._cond:
                while not self._queue and not members and not self._stopped:
                    self._cond.wait()
                if self._stopped and not members:
                    return
                admitted = []
                while self._queue and len(members) + len(admitted) < self.max_batch and not self._stopped:
                    admitted.append(self._queue.popleft())
                self._active.extend(admitted)
            try:
                for job in admitted:
                    if self._start(job):
                        sequence = self._prefill(job)
                        if sequence is not None:
                            batch.add(sequence)
                            members[id(sequence)] = (sequence, job)
                if not len(batch):
                    continue
                try:
                    batch.step()
                except BaseException as error:  # noqa: BLE001 — fails this batch's jobs, not the server
                    log.exception("engine: a decode step failed")
                    for _, job in members.values():
                        job.result.error = error
                        self._end(job)
                    members.clear()
                    batch = self.assistant.new_batch()
                    continue
                for key, (sequence, job) in list(members.items()):
                    self._forward(sequence.take_events(), job)
                    if sequence.finished:
                        del members[key]
                        if sequence.error is not None:  # this member failed (a remote call), not the batch
                            job.result.error = sequence.error
                        self._end(job)
            except BaseException:  # noqa: BLE001 — the worker must survive anything a job does
                log.exception("engine worker: unexpected failure")

    def _start(self, job: Job) -> bool:
        """Start the job's deadline; False when it ended already (cancelled or expired while it waited)."""
        now = time.monotonic()
        job._started = now
        if job.cancel_event.is_set() or now >= job.deadline:  # the client left, or time ran out: do no work
            if not job.cancel_event.is_set():
                job._abort = RequestTimedOut(self.request_timeout_s)
            job.result.done = Done("cancelled", 0, 0, 0.0)
            self._end(job)
            return False

        def on_deadline():
            job._abort = RequestTimedOut(self.request_timeout_s)
            job.cancel_event.set()

        # A timer, not a check between tokens: prefill or transcription can run long without one.
        job._timer = threading.Timer(job.deadline - now, on_deadline)
        job._timer.daemon = True
        job._timer.start()
        return True

    def _prefill(self, job: Job):
        """Run a started job up to its first token. Returns its sequence when it still has to decode
        (a chat request in a batching engine); otherwise the job has ended."""
        request = job.request
        try:
            if isinstance(request, TranscriptionRequest):
                self._transcribe(job)
            else:
                sequence = self.assistant.begin(request.messages, request.settings, audio_mode=request.audio_mode,
                                                cancel=job.cancel_event)
                self._forward(sequence.take_events(), job)  # transcripts before the prefill's wait
                self.assistant.prefill(sequence)
                self._forward(sequence.take_events(), job)
                if not sequence.finished:
                    return sequence
        except BaseException as error:  # noqa: BLE001 — becomes the consumer's error
            job.result.error = error
        self._end(job)
        return None

    def _run_stream(self, job: Job) -> None:
        """The whole job through `assistant.stream` (or `transcribe`), one job at a time."""
        request = job.request
        try:
            if isinstance(request, TranscriptionRequest):
                self._transcribe(job)
            else:
                self._forward(self.assistant.stream(request.messages, request.settings, audio_mode=request.audio_mode,
                                                    cancel=job.cancel_event), job)
        except BaseException as error:  # noqa: BLE001 — becomes the consumer's error
            job.result.error = error
        self._end(job)

    def _transcribe(self, job: Job) -> None:
        started = time.perf_counter()
        transcript = self.assistant.transcribe(job.request.audio, job.request.prompt)
        job.result.transcripts.append(transcript)
        job._push(Transcript(0, transcript))
        job.result.done = Done("stop", 0, 0, time.perf_counter() - started)

    @staticmethod
    def _forward(events, job: Job) -> None:
        for event in events:
            if isinstance(event, Done):
                job.result.done = event  # pushed by _finish, after on_finish has run
                continue
            if isinstance(event, Token):
                job._text.append(event.text)
            elif isinstance(event, Transcript):
                job.result.transcripts.append(event.text)
            job._push(event)

    def _end(self, job: Job) -> None:
        if job._timer is not None:
            job._timer.cancel()
        job.result.text = "".join(job._text)
        try:
            job._finish()
        finally:
            with self._cond:
                if job in self._active:
                    self._active.remove(job)
                self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.monotonic() - job._started)
