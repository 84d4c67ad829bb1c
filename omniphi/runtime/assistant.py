"""The one object that answers: a loaded model + processor (+ Whisper for transcripts).

The CLI, the server's engine and `omniphi eval` all talk to an `Assistant`; none of them touch
the model directly, so engine-level speed-ups (KV reuse across turns, embedding caches, batched
decode) can be added here without touching them. It is not thread-safe: the server's engine owns
one and serialises work.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import OrderedDict
from typing import Iterator

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from omniphi import presets
from omniphi.chat import (
    AudioMode,
    Conversation,
    Done,
    Event,
    GenerationSettings,
    Reply,
    Token,
    Transcript,
    content_parts,
)
from omniphi.model_card import generation_defaults
from omniphi.processing import SampleTooLongError


class TranscriptionUnavailableError(RuntimeError):
    """The loaded model has no Whisper decoder (e.g. the random `tiny` preset)."""


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue(BaseStreamer):
    """Receives new token ids from `generate` (running in a worker thread) for the caller to decode."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # with inputs_embeds, generate() first puts an empty prompt
            self.prompt_seen = True
            if value.numel() == 0:
                return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


class Assistant:
    def __init__(self, loaded: presets.LoadedModel, *, context_tokens: int | None = None):
        self.model = loaded.model
        self.processor = loaded.processor
        self.transcriber = loaded.transcriber
        self.name = loaded.name
        # How the model wants to be sampled unless the caller says otherwise (its generation_config.json)
        self.generation_defaults = generation_defaults(self.model.generation_config)
        self.card = loaded.card
        text_config = self.model.config.text_config
        self.context_tokens = context_tokens or getattr(text_config, "max_position_embeddings", 2048)
        self._transcripts: OrderedDict[str, str] = OrderedDict()  # audio hash → transcript

    @classmethod
    def load(cls, spec: str = "starter", *, device: str | None = None) -> "Assistant":
        """A preset name ("starter", "phi2", "tiny") or a model directory."""
        assistant = cls(presets.load(spec))
        if device:
            assistant.model.to(device)
        return assistant

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # -- audio ------------------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray) -> str:
        """Whisper's transcript of 16 kHz mono float32 audio (cached by content hash)."""
        if self.transcriber is None:
            raise TranscriptionUnavailableError(f"the model {self.name} has no speech recogniser")
        key = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()
        if key not in self._transcripts:
            self._transcripts[key] = self.transcriber.transcribe(audio)
            while len(self._transcripts) > 256:
                self._transcripts.popitem(last=False)
        self._transcripts.move_to_end(key)
        return self._transcripts[key]

    def _prepare(self, messages: Conversation, audio_mode: AudioMode) -> tuple[Conversation, list[str]]:
        """Transcribe audio where needed. Returns the conversation the LLM sees and the transcripts
        of the last user message's clips (shown to the user in both modes)."""
        if audio_mode not in ("native", "transcribe"):
            raise ValueError(f"audio_mode must be 'native' or 'transcribe', not {audio_mode!r}")
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        shown: list[str] = []
        prepared = []
        for i, message in enumerate(messages):
            parts = []
            for part in content_parts(message):
                if part["type"] != "audio":
                    parts.append(part)
                    continue
                needs_text = audio_mode == "transcribe"
                transcript = None
                if needs_text or (i == last_user and self.transcriber is not None):
                    transcript = self.transcribe(part["audio"])
                if i == last_user and transcript is not None:
                    shown.append(transcript)
                parts.append({"type": "text", "text": transcript} if needs_text else part)
            prepared.append({**message, "content": parts})
        return prepared, shown

    def _encode_prompt(self, messages: Conversation):
        """Encode with the generation prompt; drop the oldest turns (keeping a system message) if the
        conversation does not fit the context."""
        budget = self.context_tokens
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while True:
            sample = self.processor.encode(system + turns, add_generation_prompt=True, with_labels=False)
            if len(sample.input_ids) < budget or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
        if len(sample.input_ids) >= budget:
            raise SampleTooLongError(f"the prompt has {len(sample.input_ids)} tokens; the model's context is {budget}")
        return sample

    # -- answering ------------------------------------------------------------------------------------
    def stream(
        self,
        messages: Conversation,
        settings: GenerationSettings,
        *,
        audio_mode: AudioMode = "native",
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Answer the conversation: Transcript events for the audio of the last user message, then
        Token events, then exactly one Done. Setting `cancel` stops generation within one token
        (Done.finish_reason == "cancelled")."""
        settings.validate()
        started = time.perf_counter()
        cancel = cancel or threading.Event()
        prepared, transcripts = self._prepare(messages, audio_mode)
        for index, text in enumerate(transcripts):
            yield Transcript(index, text)

        sample = self._encode_prompt(prepared)
        batch = self.processor.collate([sample], padding_side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        prompt_tokens = int(batch["input_ids"].shape[1])
        max_new = min(settings.max_new_tokens, self.context_tokens - prompt_tokens)

        stop_now = threading.Event()  # set by us: a stop string was produced or the consumer left
        streamer = _TokenQueue()
        generate_kwargs = dict(
            max_new_tokens=max_new,
            do_sample=settings.temperature > 0,
            eos_token_id=self.processor.stop_token_ids,
            pad_token_id=self.processor.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel), _Cancelled(stop_now)]),
        )
        if settings.temperature > 0:
            generate_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        failure: list[BaseException] = []

        def run():
            try:
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                self.model.generate(**batch, **generate_kwargs)
            except BaseException as error:  # surfaced in the caller's thread below
                failure.append(error)
            finally:
                streamer.end()

        worker = threading.Thread(target=run, name="omniphi-generate", daemon=True)
        worker.start()
        stop_ids = set(self.processor.stop_token_ids)
        generated: list[int] = []
        emitted = 0  # characters of the decoded answer already yielded
        hold = max((len(s) for s in settings.stop), default=1) - 1
        finish = None
        try:
            while True:
                ids = streamer.queue.get()
                if ids is None:
                    break
                generated += ids
                if generated and generated[-1] in stop_ids:
                    finish = "stop"
                text = self.processor.decode([t for t in generated if t not in stop_ids])
                if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
                    continue
                cut = _first_stop(text, settings.stop)
                if cut is not None:
                    if cut > emitted:
                        yield Token(text[emitted:cut])
                    emitted, finish = cut, "stop"
                    stop_now.set()
                    break
                safe_end = len(text) - hold if settings.stop else len(text)
                if safe_end > emitted:
                    yield Token(text[emitted:safe_end])
                    emitted = safe_end
            if finish is None or finish == "stop" and not stop_now.is_set():
                text = self.processor.decode([t for t in generated if t not in stop_ids])
                if len(text) > emitted:
                    yield Token(text[emitted:])
        finally:
            stop_now.set()  # the consumer may have gone away: let generate() finish promptly
            worker.join()
        if failure:
            raise failure[0]
        if cancel.is_set() and finish is None:
            finish = "cancelled"
        elif finish is None:
            finish = "length" if len(generated) >= max_new else "stop"
        completion_tokens = len(generated)
        yield Done(finish, prompt_tokens, completion_tokens, time.perf_counter() - started)

    def complete(self, messages: Conversation, settings: GenerationSettings, *, audio_mode: AudioMode = "native") -> Reply:
        text, transcripts, done = [], [], None
        for event in self.stream(messages, settings, audio_mode=audio_mode):
            if isinstance(event, Token):
                text.append(event.text)
            elif isinstance(event, Transcript):
                transcripts.append(event.text)
            elif isinstance(event, Done):
                done = event
        assert done is not None
        return Reply("".join(text), transcripts, done.finish_reason, done.prompt_tokens, done.completion_tokens, done.seconds)


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None
