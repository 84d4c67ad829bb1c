"""The one object that answers: a loaded model + processor (+ Whisper for transcripts).

The CLI, the server's engine, `omniphi eval` and the starter build all talk to an `Assistant`;
none of them touch the model directly. It answers one conversation (`stream`, `complete`), many
at once (`complete_batch`), scores token log-probabilities (`token_logprobs`), and exposes the
steps the server's engine interleaves for batched serving (`begin` → `prefill` → a
`DecodeBatch` from `new_batch`).

What makes a follow-up turn cheap: image/audio features are cached by content hash, and the
key/values of recent conversations are kept, so a prompt prefills only the tokens after the
longest cached prefix (a regenerate or an edited message reuses what it still shares). Greedy
answers are the same as with empty caches. It is not thread-safe: one thread drives it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Iterator

import numpy as np
import torch

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
)
from omniphi.model.audio_encoder import audio_token_count
from omniphi.model.modeling import PlaceholderMismatchError
from omniphi.model_card import generation_defaults
from omniphi.processing import EncodedSample, SampleTooLongError, pad_audio_windows
from omniphi.runtime.caches import MediaCache, PrefixCache
from omniphi.runtime.decoding import KV, DecodeBatch, Sequence, new_cache
from omniphi.runtime.transcripts import TranscriptCache, TranscriptionUnavailableError, prepare_audio
from omniphi.trimming import PromptCancelled, fit_prompt

KV_CACHE_BYTES = 2 << 30  # key/values of recent conversations (Phi-2 in bf16: ~0.33 MB per token)
MEDIA_CACHE_BYTES = 512 << 20  # projected image/audio features (Phi-2: 5.9 MB per image in fp32)


class Assistant:
    def __init__(self, loaded: presets.LoadedModel, *, context_tokens: int | None = None,
                 kv_cache_bytes: int = KV_CACHE_BYTES, media_cache_bytes: int = MEDIA_CACHE_BYTES):
        self.model = loaded.model
        self.processor = loaded.processor
        self.transcriber = loaded.transcriber
        self.name = loaded.name
        # How the model wants to be sampled unless the caller says otherwise (its generation_config.json)
        self.generation_defaults = generation_defaults(self.model.generation_config)
        self.card = loaded.card
        text_config = self.model.config.text_config
        self.context_tokens = context_tokens or getattr(text_config, "max_position_embeddings", 2048)
        self._transcripts = TranscriptCache()
        self.media_cache = MediaCache(media_cache_bytes)
        self.prefix_cache = PrefixCache(kv_cache_bytes)

    @classmethod
    def load(cls, spec: str = "starter", *, device: str = "auto", dtype: str = "auto",
             quantize: str = "none", media_placement: str = "auto", **options) -> "Assistant":
        """A preset name ("starter", "phi2", "tiny"), a model directory or a training output, loaded by
        `omniphi.runtime.load` (which says what `auto` picks)."""
        from omniphi.runtime.loading import load

        return cls(load(spec, device=device, dtype=dtype, quantize=quantize, media_placement=media_placement),
                   **options)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # -- audio ------------------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """Whisper's transcript of 16 kHz mono float32 audio (cached by content hash); ``prompt``
        replaces the model's own (``omniphi.asr.Transcriber``; "" for none)."""
        if self.transcriber is None:
            raise TranscriptionUnavailableError(f"the model {self.name} has no speech recogniser")
        return self._transcripts.transcribe(self.transcriber, audio, prompt)

    def _prepare(self, messages: Conversation, audio_mode: AudioMode,
                 cancel: threading.Event | None = None) -> tuple[Conversation, list[str]]:
        return prepare_audio(messages, audio_mode, self.transcribe, has_transcriber=self.transcriber is not None,
                             cancel=cancel)

    def _encode_prompt(self, messages: Conversation, cancel: threading.Event | None = None):
        """Encode with the generation prompt; drop the oldest exchanges (keeping a system message) if
        the conversation does not fit the context (work bounded by the context: omniphi.trimming)."""
        return fit_prompt(self.processor, messages, self.context_tokens, cancel)

    # -- prompts as model inputs ----------------------------------------------------------------------
    def _position_keys(self, sample: EncodedSample) -> tuple[list, list["_MediaRun"]]:
        """One key per prompt position (the token id; the media's content hash inside a media run) and
        the media runs in order."""
        ids = sample.input_ids.tolist()
        keys: list = list(ids)
        runs: list[_MediaRun] = []
        image_index, clip_index, window_index, i = 0, 0, 0, 0
        stack = self.model.config.audio_stack_factor
        while i < len(ids):
            if ids[i] == self.processor.image_token_id:
                pixels = sample.pixel_values[image_index:image_index + 1]
                run = _MediaRun(i, self.processor.image_seq_length, "image:" + _content_hash(pixels), pixels=pixels)
                image_index += 1
            elif ids[i] == self.processor.audio_token_id:
                n_windows = sample.audio_clip_windows[clip_index]
                windows = sample.audio_windows[window_index:window_index + n_windows]
                length = audio_token_count([w.shape[-1] for w in windows], stack)
                run = _MediaRun(i, length, "audio:" + _content_hash(*windows), windows=windows)
                clip_index, window_index = clip_index + 1, window_index + n_windows
            else:
                i += 1
                continue
            keys[i:i + run.length] = [run.key] * run.length
            runs.append(run)
            i += run.length
        return keys, runs

    def _media_features(self, run: "_MediaRun") -> torch.Tensor:
        """[run.length, llm_hidden], from the media cache or encoded once now."""
        features = self.media_cache.get(run.key)
        if features is None:
            if run.pixels is not None:
                features = self.model.get_image_features(run.pixels.to(self.device))[0]
            else:
                mel, lengths = pad_audio_windows(run.windows)
                mel = mel.to(self.device, self.model.audio_tower.dtype)
                n_windows = torch.tensor([len(run.windows)])
                features = self.model.get_audio_features(mel, lengths.to(self.device), n_windows)[0]
            self.media_cache.put(run.key, features)
        if features.shape[0] != run.length:
            raise PlaceholderMismatchError(f"{run.key.split(':')[0]} placeholders and features do not match: "
                                           f"{run.length} tokens, {features.shape[0]} embeddings")
        return features

    def _embed(self, prompt: "_Prompt", start: int) -> torch.Tensor:
        """Input embeddings [1, L - start, hidden] of the prompt's positions from `start` on."""
        ids = prompt.sample.input_ids[start:].to(self.device)
        media = (ids == self.processor.image_token_id) | (ids == self.processor.audio_token_id)
        embeds = self.model.get_input_embeddings()(ids.masked_fill(media, 0))  # placeholders are overwritten
        for run in prompt.runs:
            lo, hi = max(run.start, start), run.start + run.length
            if hi > lo:
                features = self._media_features(run)
                embeds[lo - start:hi - start] = features[lo - run.start:hi - run.start].to(embeds.dtype)
        return embeds[None]

    # -- answering: the steps ---------------------------------------------------------------------------
    def begin(self, messages: Conversation, settings: GenerationSettings, *, audio_mode: AudioMode = "native",
              cancel: threading.Event | None = None, ignore_eos: bool = False) -> Sequence:
        """Transcribe and encode: a Sequence whose events hold the Transcripts, ready for `prefill`.
        `ignore_eos` (benchmarks) decodes max_new_tokens whatever the model says."""
        settings.validate()
        started = time.perf_counter()
        try:  # Stop, a disconnect or the deadline may come while transcribing or trimming
            prepared, transcripts = self._prepare(messages, audio_mode, cancel)
            sample = self._encode_prompt(prepared, cancel)
        except PromptCancelled:
            return self._cancelled(settings, started)
        sequence = self._sequence(sample, settings, cancel, ignore_eos, started)
        sequence.events.extend(Transcript(i, text) for i, text in enumerate(transcripts))
        return sequence

    def begin_text(self, text: str, settings: GenerationSettings, *, cancel: threading.Event | None = None,
                   ignore_eos: bool = False) -> Sequence:
        """Like `begin`, for continuing plain text: the tokenizer's own special tokens, no chat
        template, no media."""
        settings.validate()
        started = time.perf_counter()
        ids = self.processor.tokenizer(text)["input_ids"]
        if not ids or len(ids) >= self.context_tokens:
            raise SampleTooLongError(f"the text has {len(ids)} tokens; the model's context is {self.context_tokens}")
        sample = EncodedSample(torch.tensor(ids, dtype=torch.long), None, torch.zeros(0, 3, 1, 1))
        return self._sequence(sample, settings, cancel, ignore_eos, started)

    def _cancelled(self, settings: GenerationSettings, started: float) -> Sequence:
        """A sequence that ends before its prompt was encoded: prefill and decoding skip it."""
        sequence = Sequence(settings, decode=self.processor.decode, stop_token_ids=self.processor.stop_token_ids,
                            max_new_tokens=0, started=started)
        sequence.finish("cancelled")
        return sequence

    def _sequence(self, sample: EncodedSample, settings, cancel, ignore_eos, started) -> Sequence:
        prompt_tokens = len(sample.input_ids)
        sequence = Sequence(settings, decode=self.processor.decode, stop_token_ids=self.processor.stop_token_ids,
                            max_new_tokens=min(settings.max_new_tokens, self.context_tokens - prompt_tokens),
                            cancel=cancel, ignore_eos=ignore_eos, started=started)
        sequence.prompt_tokens = prompt_tokens
        keys, runs = self._position_keys(sample)
        sequence.prompt_keys, sequence.prompt = keys, _Prompt(sample, runs)
        return sequence

    @torch.inference_mode()
    def prefill(self, sequence: Sequence) -> None:
        """Run the prompt's uncached positions and choose the first token (or finish: cancelled, a
        one-token answer). An unfinished sequence has `kv` set and can join a DecodeBatch."""
        prompt, sequence.prompt = sequence.prompt, None
        if sequence.check_cancel():
            return
        keys = sequence.prompt_keys
        # The last position is always run: its logits give the first token.
        entry, reused = self.prefix_cache.longest_prefix(keys, limit=len(keys) - 1)
        cache = new_cache(entry.cropped(reused) if reused else None)
        out = self.model.language_model(
            inputs_embeds=self._embed(prompt, reused),
            attention_mask=torch.ones(1, len(keys), dtype=torch.long, device=self.device),
            position_ids=torch.arange(reused, len(keys), device=self.device)[None],
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        sequence.reused_tokens = reused
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        sequence.choose(out.logits[0, -1])
        if sequence.finished:
            self._remember(sequence, kv)
        else:
            sequence.kv = kv

    def new_batch(self) -> DecodeBatch:
        """A decode batch whose finished members' key/values go to the prefix cache."""
        return DecodeBatch(self.model.language_model, on_retire=self._remember)

    def _remember(self, sequence: Sequence, kv: KV) -> None:
        keys = sequence.cached_keys
        if kv[0][0].shape[2] != len(keys):
            raise RuntimeError(f"key/values cover {kv[0][0].shape[2]} positions, the sequence {len(keys)}")
        self.prefix_cache.put(keys, kv)  # views of a finished batch's buffers, spare room included (it counts)

    # -- answering ----------------------------------------------------------------------------------------
    def stream(
        self,
        messages: Conversation,
        settings: GenerationSettings,
        *,
        audio_mode: AudioMode = "native",
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[Event]:
        """Answer the conversation: Transcript events for the audio of the last user message, then
        Token events, then exactly one Done. Setting `cancel` stops generation within one token
        (Done.finish_reason == "cancelled")."""
        sequence = self.begin(messages, settings, audio_mode=audio_mode, cancel=cancel, ignore_eos=ignore_eos)
        yield from sequence.take_events()
        self.prefill(sequence)
        yield from sequence.take_events()
        if not sequence.finished:
            batch = self.new_batch()
            batch.add(sequence)
            while not sequence.finished:
                batch.step()
                yield from sequence.take_events()

    def complete(self, messages: Conversation, settings: GenerationSettings, *, audio_mode: AudioMode = "native",
                 ignore_eos: bool = False) -> Reply:
        sequence = self.begin(messages, settings, audio_mode=audio_mode, ignore_eos=ignore_eos)
        self._run([sequence])
        return _reply(sequence)

    def complete_batch(self, conversations: list[Conversation], settings: GenerationSettings, *,
                       audio_mode: AudioMode = "native", skip_too_long: bool = False,
                       ignore_eos: bool = False) -> list[Reply | None]:
        """Answer several conversations, decoding them together. With `skip_too_long`, a prompt that
        does not fit the context gives None instead of raising SampleTooLongError."""
        sequences: list[Sequence | None] = []
        for messages in conversations:
            try:
                sequences.append(self.begin(messages, settings, audio_mode=audio_mode, ignore_eos=ignore_eos))
            except SampleTooLongError:
                if not skip_too_long:
                    raise
                sequences.append(None)
        self._run([s for s in sequences if s is not None])
        return [None if s is None else _reply(s) for s in sequences]

    def continue_texts(self, texts: list[str], settings: GenerationSettings | list[GenerationSettings]) -> list[Reply]:
        """Continue several plain texts together (see `begin_text`); one settings or one per text."""
        each = settings if isinstance(settings, list) else [settings] * len(texts)
        sequences = [self.begin_text(text, s) for text, s in zip(texts, each, strict=True)]
        self._run(sequences)
        return [_reply(s) for s in sequences]

    def _run(self, sequences: list[Sequence]) -> None:
        batch = self.new_batch()
        for sequence in sequences:
            self.prefill(sequence)
            if not sequence.finished:
                batch.add(sequence)
        while len(batch):
            batch.step()

    @torch.inference_mode()
    def token_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """log p(token_j | tokens before j) for j = 1 … n-1 under the language model (plain tokens, no
        template, no media): float32 [n - 1]. What perplexity is computed from."""
        if len(token_ids) < 2:
            raise ValueError("scoring needs at least 2 tokens")
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.model.language_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1]
        return torch.log_softmax(logits.float(), -1).gather(1, ids[0, 1:, None])[:, 0]


class _MediaRun:
    """The placeholder positions of one image or audio clip in a prompt."""

    def __init__(self, start: int, length: int, key: str, *, pixels=None, windows=None):
        self.start, self.length, self.key = start, length, key
        self.pixels, self.windows = pixels, windows


class _Prompt:
    def __init__(self, sample: EncodedSample, runs: list[_MediaRun]):
        self.sample, self.runs = sample, runs


def _content_hash(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _reply(sequence: Sequence) -> Reply:
    text, transcripts, done = [], [], None
    for event in sequence.take_events():
        if isinstance(event, Token):
            text.append(event.text)
        elif isinstance(event, Transcript):
            transcripts.append(event.text)
        elif isinstance(event, Done):
            done = event
    assert done is not None, "the sequence did not finish"
    return Reply("".join(text), transcripts, done.finish_reason, done.prompt_tokens, done.completion_tokens,
                 done.seconds, token_ids=list(sequence.token_ids), logprobs=list(sequence.logprobs))
