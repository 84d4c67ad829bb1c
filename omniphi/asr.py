"""Speech → text with a transformers Whisper model (beam search, 30 s windows)."""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np
import torch
from transformers import LogitsProcessor

SAMPLING_RATE = 16_000
WINDOW_SECONDS = 30.0
# Where a window must end early, it ends at the quietest 20 ms within its last few seconds, so a
# cut falls between words rather than through one (which Whisper would garble on both sides).
CUT_SEARCH_SECONDS = 5.0
_FRAME_SECONDS = 0.02
_SMOOTH_FRAMES = 7  # ±140 ms
# Peak amplitude below which a window is treated as silence and not decoded at all: Whisper
# tends to hallucinate ("you", "Thank you.") on silent input. -60 dBFS.
SILENCE_PEAK = 1e-3
# Whisper reads a prompt in the first half of its 448-token context; openai-whisper keeps a longer
# prompt's last 223 tokens, and so does this.
MAX_PROMPT_TOKENS = 223


def split_windows(
    audio: np.ndarray,
    sampling_rate: int = SAMPLING_RATE,
    window_seconds: float = WINDOW_SECONDS,
    search_seconds: float = CUT_SEARCH_SECONDS,
) -> list[tuple[int, int]]:
    """Cut ``audio`` into contiguous ``(start, end)`` sample ranges of at most ``window_seconds``.

    Every window but the last ends at the lowest-energy 20 ms frame of its final
    ``search_seconds`` (at the window limit when the audio is equally loud throughout).
    """
    n = int(audio.shape[0])
    size = int(round(window_seconds * sampling_rate))
    search = min(int(round(search_seconds * sampling_rate)), size // 2)
    frame = max(1, int(round(_FRAME_SECONDS * sampling_rate)))
    windows = []
    start = 0
    while n - start > size:
        lo = start + size - search
        seg = audio[lo : start + size].astype(np.float64)
        frames = len(seg) // frame
        energy = (seg[: frames * frame].reshape(frames, frame) ** 2).sum(axis=1)
        # Energy summed over ±_SMOOTH_FRAMES neighbours: a pause between sentences beats the
        # short gaps between words (which synthetic speech makes exactly silent too).
        k = 2 * _SMOOTH_FRAMES + 1
        smooth = np.convolve(np.pad(energy, _SMOOTH_FRAMES, mode="edge"), np.ones(k), mode="valid")
        # Cut in the middle of the last run of quietest frames: in a pause between sentences
        # both sides keep some silence, and Whisper hears speech that starts right at a window's
        # edge noticeably worse. (With background noise the run is usually a single frame.)
        last = frames - 1 - int(np.argmin(smooth[::-1]))
        first = last
        while first > 0 and smooth[first - 1] <= smooth[last]:
            first -= 1
        end = lo + ((first + last + 1) * frame) // 2
        windows.append((start, end))
        start = end
    if n > start:
        windows.append((start, n))
    return windows


class SuppressTokens(LogitsProcessor):
    """Whisper's two token bans in one processor with precomputed masks: ``suppress`` at every step,
    ``begin_suppress`` (space, end of text) at the first generated position.

    It replaces transformers' SuppressTokens and SuppressTokensAtBegin processors, which rebuild their
    mask with ``torch.isin`` over the whole 51,864-id vocabulary at every step: ~0.1-1 s per call on
    a CPU, more than the tiny model's decoder itself. Same scores, so the same transcripts.
    One instance per ``generate`` call (the first call it sees is the first generated position).
    """

    def __init__(self, suppress, begin_suppress, vocab_size: int):
        self.always = self._mask(suppress, vocab_size)
        self.at_begin = self.always | self._mask(begin_suppress, vocab_size)
        self.began = False

    @staticmethod
    def _mask(ids, vocab_size: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[[i for i in ids or () if 0 <= i < vocab_size]] = True
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.always if self.began else self.at_begin
        self.began = True
        return scores.masked_fill(mask[: scores.shape[-1]].to(scores.device), -float("inf"))


# Beam search, as Whisper's reference `transcribe` command decodes: fewer word errors than greedy on hard
# audio for ~1.7x the decoding time (README, "The starter model"; bench/whisper_decoding.py).
BEAMS = 5
# Whisper's own test for a decoding stuck in a loop ("it's been a long time, it's been a long time, …",
# which beam search produced for one 2 s question of 900): text that zlib compresses more than this.
# Such a window is decoded again greedily and the less repetitive text kept.
COMPRESSION_RATIO_LIMIT = 2.4
# A window's transcript gets at most this many tokens per second of audio (plus TOKEN_BUDGET_MIN): fast
# speech is ~4 tokens a second, so a loop stops long before Whisper's 448-token limit, which a 2 s clip
# would otherwise spend minutes of beam search on.
TOKENS_PER_SECOND = 8
TOKEN_BUDGET_MIN = 16


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression (0 for empty text): ~1 for a sentence, far
    above COMPRESSION_RATIO_LIMIT for a phrase repeated over and over."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Transcriber:
    """Deterministic Whisper transcription (beam search, no sampling) of 16 kHz mono float32 audio of
    any length.

    Audio over 30 s is split into windows (see ``split_windows``) that are transcribed one after
    the other and joined with spaces; silent windows are skipped.

    ``prompt`` is Whisper's initial prompt (openai-whisper's ``--initial_prompt``, the ``prompt`` of
    OpenAI's transcription API): text the decoder reads as if it came before each window, so it
    spells the words it names as the prompt does. A model trained on a small world (the starter)
    carries the words of that world in its directory (``omniphi.model_card.TRANSCRIPTION_CONFIG_FILE``).
    """

    def __init__(self, model, processor, silence_peak: float = SILENCE_PEAK, prompt: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.silence_peak = silence_peak
        self.prompt = prompt  # None or "": no prompt
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self.beams = BEAMS  # 1: greedy (bench/whisper_decoding.py compares the two)
        # No sampling, explicitly, so a config that samples cannot change transcripts; the token bans move
        # into SuppressTokens (see there why).
        self._generation_config = copy.deepcopy(model.generation_config)
        self._suppress = (self._generation_config.suppress_tokens, self._generation_config.begin_suppress_tokens)
        self._generation_config.update(do_sample=False, suppress_tokens=[], begin_suppress_tokens=[])

    @classmethod
    def starter(cls, dtype: torch.dtype = torch.float32) -> "Transcriber":
        """The offline tiny.en Whisper (``omniphi.weights.ct2_whisper``)."""
        from .weights.ct2_whisper import load_starter_whisper

        return cls(*load_starter_whisper(dtype=dtype))

    def save_pretrained(self, directory) -> None:
        """Whisper + its processor, loadable with `from_pretrained` (a model directory's transcriber/)."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    def windows(self, audio: np.ndarray) -> list[tuple[int, int]]:
        return split_windows(audio, self.sampling_rate)

    def _check(self, audio, sampling_rate: int) -> np.ndarray:
        if sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio must be sampled at {self.sampling_rate} Hz (got {sampling_rate}); "
                "decode it with omniphi.media.load_audio, which resamples"
            )
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono, a 1-D array of samples (got shape {audio.shape})")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        return audio

    def _prompt_ids(self, prompt: str | None) -> torch.Tensor | None:
        if not prompt or not prompt.strip():
            return None
        ids = self.processor.get_prompt_ids(prompt.strip(), return_tensors="pt")  # <|startofprev|> + the text
        if len(ids) > MAX_PROMPT_TOKENS + 1:
            ids = torch.cat([ids[:1], ids[-MAX_PROMPT_TOKENS:]])
        return ids.to(self.model.device)

    @torch.inference_mode()
    def _transcribe_window(self, chunk: np.ndarray, prompt_ids: torch.Tensor | None) -> str:
        feats = self.processor.feature_extractor(
            chunk, sampling_rate=self.sampling_rate, return_tensors="pt"
        ).input_features
        feats = feats.to(device=self.model.device, dtype=self.model.dtype)
        # a 30 s window: 256 tokens, within Whisper's 448 with its start tokens and a longest prompt
        budget = TOKEN_BUDGET_MIN + math.ceil(len(chunk) / self.sampling_rate * TOKENS_PER_SECOND)
        text = self._decode(feats, self.beams, budget, prompt_ids)
        if compression_ratio(text) > COMPRESSION_RATIO_LIMIT:
            text = min((text, self._decode(feats, 1, budget, prompt_ids)), key=compression_ratio)
        return text

    def _decode(self, feats: torch.Tensor, beams: int, max_tokens: int, prompt_ids: torch.Tensor | None) -> str:
        # The generation config supplies the start tokens (<|startoftranscript|>, and <|notimestamps|>);
        # the budget goes in as its max_length (which counts those few tokens too; transformers adds a
        # prompt's length to it), all settings in one config, as transformers asks (arguments beside a
        # config print a warning at every call). The returned ids hold no prompt.
        config = copy.deepcopy(self._generation_config)
        config.update(num_beams=beams, max_length=max_tokens)
        bans = SuppressTokens(*self._suppress, vocab_size=self.model.config.vocab_size)
        extra = {} if prompt_ids is None else {"prompt_ids": prompt_ids}
        ids = self.model.generate(input_features=feats, generation_config=config, logits_processor=[bans], **extra)
        return self.processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()

    def transcribe(self, audio: np.ndarray, sampling_rate: int = SAMPLING_RATE, *, prompt: str | None = None) -> str:
        """Text of ``audio`` (float32, mono, 16 kHz); "" for empty or silent input. ``prompt``
        replaces the transcriber's own for this call ("" for none)."""
        audio = self._check(audio, sampling_rate)
        prompt_ids = self._prompt_ids(self.prompt if prompt is None else prompt)
        parts = []
        for start, end in self.windows(audio):
            chunk = audio[start:end]
            if chunk.size == 0 or float(np.abs(chunk).max()) < self.silence_peak:
                continue
            text = self._transcribe_window(chunk, prompt_ids)
            if text:
                parts.append(text)
        return " ".join(parts)
