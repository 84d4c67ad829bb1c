"""Step-level batched decoding: sequences that started at different times decode together.

A `Sequence` is one answer being written: its sampling settings and random generator, the tokens
so far with their log-probabilities, stop-string handling, cancel, and the events it has produced
for its consumer. It is prefilled on its own (by the Assistant, reusing cached prefixes) and then
joins a `DecodeBatch`, which feeds every member's last token through the LLM in one forward pass.

The batch keeps its members' key/value states left-padded to a common length, with an attention
mask that hides the padding and explicit per-row position ids, as transformers' own `generate`
does for a left-padded batch, so a member's tokens do not depend on who else is in the batch.
A member leaves at the step it finishes (its key/values are handed to `on_retire`, to be cached);
a new one joins at the next step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from omniphi.chat import Done, Event, GenerationSettings, Token
from omniphi.runtime.quantize import cores_left_to_kernels, runs_cpu_kernels

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, length, head_dim]


class Sequence:
    """One answer in progress. `events` fills with Transcript*/Token* and finally one Done."""

    def __init__(self, settings: GenerationSettings, *, decode: Callable[[list[int]], str], stop_token_ids,
                 max_new_tokens: int, cancel: threading.Event | None = None, ignore_eos: bool = False,
                 started: float = 0.0):
        self.settings = settings
        self.decode = decode
        self.stop_token_ids = frozenset(stop_token_ids)
        self.max_new_tokens = max_new_tokens
        self.cancel = cancel or threading.Event()
        self.ignore_eos = ignore_eos
        self.started = started
        self.events: deque[Event] = deque()
        self.token_ids: list[int] = []  # every sampled token, a final EOS included
        self.logprobs: list[float] = []  # log p of each sampled token under the model (before temperature)
        self.prompt_keys: list = []  # position keys of the prompt (see caches.PositionKey)
        self.prompt_tokens = 0
        self.prompt = None  # what prefill needs (set by the Assistant, dropped after prefill)
        self.reused_tokens = 0  # prompt positions whose key/values came from the prefix cache
        self.kv: KV | None = None  # the prompt's key/values after prefill, until it joins a batch
        self.finish_reason: str | None = None
        self.error: BaseException | None = None  # set when it ended by failing instead of with a Done
        self.seconds = 0.0
        self._emitted = 0  # characters of the answer text already sent as Token events
        self._hold = max((len(s) for s in settings.stop), default=1) - 1  # a stop string may be forming
        self.generator: torch.Generator | None = None
        if settings.temperature > 0:
            self.generator = torch.Generator()
            if settings.seed is not None:
                self.generator.manual_seed(settings.seed)
            else:
                self.generator.seed()

    def take_events(self) -> list[Event]:
        """The events produced since the last call, oldest first."""
        events = list(self.events)
        self.events.clear()
        return events

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def pending_token(self) -> int:
        """The last sampled token: the next input of this row."""
        return self.token_ids[-1]

    @property
    def cached_keys(self) -> list:
        """Position keys of what this sequence's key/values cover: the prompt and every token fed back."""
        return self.prompt_keys + self.token_ids[:-1]

    def text(self) -> str:
        return self.decode([t for t in self.token_ids if t not in self.stop_token_ids])

    # -- one new token --------------------------------------------------------------------------
    def choose(self, logits: torch.Tensor) -> None:
        """Sample the next token from this row's logits [vocab] and update text, events and state."""
        logits = logits.float()
        if self.generator is None:
            token = int(torch.argmax(logits))
        else:
            token = _sample(logits, self.settings.temperature, self.settings.top_p, self.generator)
        self.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        self.token_ids.append(token)
        if token in self.stop_token_ids and not self.ignore_eos:
            self._flush()
            self.finish("stop")
            return
        text = self.text()
        if not text.endswith("\ufffd"):  # else a multi-byte character is split across tokens: wait for the rest
            cut = _first_stop(text, self.settings.stop)
            if cut is not None:
                if cut > self._emitted:
                    self.events.append(Token(text[self._emitted:cut]))
                self._emitted = cut
                self.finish("stop")
                return
            safe_end = len(text) - self._hold if self.settings.stop else len(text)
            if safe_end > self._emitted:
                self.events.append(Token(text[self._emitted:safe_end]))
                self._emitted = safe_end
        if len(self.token_ids) >= self.max_new_tokens:
            self._flush()
            self.finish("length")

    def check_cancel(self) -> bool:
        if not self.finished and self.cancel.is_set():
            self.finish("cancelled")
        return self.finished

    def _flush(self) -> None:
        text = self.text()
        if len(text) > self._emitted:
            self.events.append(Token(text[self._emitted:]))
            self._emitted = len(text)

    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.seconds = time.perf_counter() - self.started
        self.events.append(Done(reason, self.prompt_tokens, len(self.token_ids), self.seconds))


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, -1) - sorted_probs  # mass of the tokens ranked above each
        sorted_probs[before >= top_p] = 0.0  # the top token always stays (its `before` is 0)
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


class GrowingLayer(DynamicLayer):
    """A key/value layer that writes new positions into spare room instead of concatenating.

    transformers' DynamicLayer copies the whole cache at every step (torch.cat); that traffic is
    comparable to reading quantised weights. This one grows its buffers geometrically and exposes
    views of the filled part, so a decode step writes one position per layer."""

    _STEP = 256  # buffers grow to a multiple of this many positions

    def __init__(self):
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        needed = self._filled + key_states.shape[-2]
        if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
            capacity = max(needed, 2 * self._filled)
            capacity = -(-capacity // self._STEP) * self._STEP
            self._key_buffer = self._grow(self._key_buffer, key_states, capacity)
            self._value_buffer = self._grow(self._value_buffer, value_states, capacity)
        self._key_buffer[:, :, self._filled:needed] = key_states
        self._value_buffer[:, :, self._filled:needed] = value_states
        self._filled = needed
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values

    def _grow(self, old: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        shape = list(like.shape)
        shape[-2] = capacity
        buffer = like.new_empty(shape)
        if old is not None:
            buffer[:, :, :self._filled] = old[:, :, :self._filled]
        return buffer


def new_cache(kv: KV | None = None) -> DynamicCache:
    """A cache of GrowingLayers, filled with `kv` when given."""
    cache = DynamicCache()
    if kv is not None:
        cache.layers = [GrowingLayer() for _ in kv]
        for layer, (keys, values) in zip(cache.layers, kv):
            layer.update(keys, values)
    else:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


class DecodeBatch:
    """The running decode batch of one language model. Not thread-safe: one thread drives it."""

    def __init__(self, language_model, on_retire: Callable[[Sequence, KV], None] | None = None):
        self.lm = language_model
        self.on_retire = on_retire
        self.members: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [batch, length] 1 = real position
        self._positions: torch.Tensor | None = None  # [batch] position id of each row's next input
        self._step_threads = cores_left_to_kernels if runs_cpu_kernels(language_model) else contextlib.nullcontext

    def __len__(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def add(self, sequence: Sequence) -> None:
        """A prefilled, unfinished sequence (its `kv` set) joins; it decodes from the next step."""
        kv, sequence.kv = sequence.kv, None
        length = kv[0][0].shape[2]
        device = self.device
        row_mask = torch.ones(1, length, dtype=torch.long, device=device)
        row_position = torch.tensor([length], dtype=torch.long, device=device)
        if not self.members:
            self._cache = new_cache(kv)
            self._mask, self._positions = row_mask, row_position
        else:
            current = self._mask.shape[1]
            layers = self._layers()
            if length < current:
                kv = [(_pad_left(k, current - length), _pad_left(v, current - length)) for k, v in kv]
                row_mask = _pad_left(row_mask, current - length)
            elif length > current:
                layers = [(_pad_left(k, length - current), _pad_left(v, length - current)) for k, v in layers]
                self._mask = _pad_left(self._mask, length - current)
            merged = [(torch.cat([k, rk]), torch.cat([v, rv])) for (k, v), (rk, rv) in zip(layers, kv)]
            self._cache = new_cache(merged)
            self._mask = torch.cat([self._mask, row_mask])
            self._positions = torch.cat([self._positions, row_position])
        self.members.append(sequence)

    def _layers(self) -> KV:
        return [(layer.keys, layer.values) for layer in self._cache.layers]

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Drop cancelled members, decode one token for every other member; returns those that finished
        (already removed, their events complete)."""
        cancelled = [s for s in self.members if s.check_cancel()]
        if cancelled:  # out before the forward pass, so their key/values end at their last fed token
            self._retire(cancelled)
        if not self.members:
            return cancelled
        inputs = torch.tensor([[s.pending_token] for s in self.members], device=self.device)
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], 1)
        with self._step_threads():
            out = self.lm(input_ids=inputs, attention_mask=mask, position_ids=self._positions[:, None],
                          cache=self._cache, use_cache=True)
        self._mask, self._positions = mask, self._positions + 1
        logits = out.logits[:, -1]
        finished = []
        for row, sequence in enumerate(self.members):
            sequence.choose(logits[row])
            if sequence.finished:
                finished.append(sequence)
        if finished:
            self._retire(finished)
        return cancelled + finished

    def _retire(self, done: list[Sequence]) -> None:
        layers = self._layers()
        keep = [row for row, s in enumerate(self.members) if s not in done]
        # A lone member's key/values are handed over as views of the batch's buffers, which the batch drops
        # below and never writes again: a copy would be a long prompt's whole state (hundreds of MB for Phi-2)
        # written into fresh memory at the end of every answer (bench/answer_steps.py times that step).
        # A row of a larger batch is copied, so that it does not keep the other rows' buffers alive.
        handover = len(self.members) == 1
        for row, sequence in enumerate(self.members):
            if sequence in done and self.on_retire is not None:
                real = int(self._mask[row].sum())  # = len(sequence.cached_keys)
                rows = [(k[row:row + 1, :, -real:], v[row:row + 1, :, -real:]) for k, v in layers]
                self.on_retire(sequence, rows if handover else [(k.clone(), v.clone()) for k, v in rows])
        if not keep:
            self.members, self._cache, self._mask, self._positions = [], None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # columns of padding shared by every row
        self._cache = new_cache([(k.index_select(0, index)[:, :, drop:], v.index_select(0, index)[:, :, drop:])
                                 for k, v in layers])
        self._mask = mask[:, drop:]
        self._positions = self._positions.index_select(0, index)
        self.members = [self.members[row] for row in keep]


def _pad_left(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad dimension 2 (KV length) or 1 (a mask) on the left by n."""
    dim = 2 if tensor.dim() == 4 else 1
    shape = list(tensor.shape)
    shape[dim] = n
    return torch.cat([tensor.new_zeros(shape), tensor], dim)
