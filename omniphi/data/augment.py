"""Harder versions of clean synthetic speech, as a user's microphone delivers it: another speed,
background noise, a room's echo, a telephone's narrow band, a browser's lossy codec.

Why: TTS questions are studio-clean. A model whose native audio path only heard them collapses
where Whisper starts to mishear (the issue: native 30.8 % against transcribe 66.7 % on espeak-ng's
voices); trained on the same questions made hard, it should degrade no faster than the transcript.

``augment(audio, rng)`` applies a random chain (each effect with its own probability, at least
one) and says which; ``augment_spoken(root, split, fraction, seed)`` replaces that fraction of a
shapes split's spoken questions with augmented copies (seeded per question) before the dialogues
and the ASR manifest are written from them. All effects run offline: numpy/scipy, and PyAV for
the codec round trips (WebM/Opus as browsers record, Ogg/Opus, MP3).
"""

from __future__ import annotations

import io
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SAMPLING_RATE = 16_000
# (container, encoder, sample rate, bit rate): what browsers and phones send
CODECS = (("webm", "libopus", 48_000, 24_000), ("ogg", "libopus", 48_000, 16_000), ("mp3", "libmp3lame", 16_000, 32_000))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Played `factor` times faster: shorter and higher (tempo and pitch together, as in Kaldi's
    speed perturbation)."""
    n = max(1, int(round(len(audio) / factor)))
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    if colour == "brown":  # hum-like: energy in the low frequencies
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(401) / 401, mode="same")
    signal_power = float(np.mean(audio ** 2)) or 1e-8
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / (float(np.mean(noise ** 2)) or 1e-8))
    return (audio + noise).astype(np.float32)


def add_room(audio: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolved with a synthetic room impulse response: the direct sound, then exponentially
    decaying diffuse echoes (-60 dB after `rt60` seconds)."""
    from scipy.signal import fftconvolve

    n = int(rt60 * SAMPLING_RATE)
    t = np.arange(n) / SAMPLING_RATE
    response = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    response[0] = 1.0
    wet = fftconvolve(audio, response)[: len(audio)]
    return (wet / (np.abs(wet).max() or 1.0) * (np.abs(audio).max() or 1.0)).astype(np.float32)


def band_limit(audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """A telephone's pass band."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=SAMPLING_RATE, output="sos")
    return sosfiltfilt(sos, audio).astype(np.float32)


def codec_round_trip(audio: np.ndarray, container: str, encoder: str, rate: int, bit_rate: int) -> np.ndarray:
    """Encoded as a browser or phone would send it, and decoded again as the server does."""
    import av

    from omniphi import media

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(encoder, rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1)[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SAMPLING_RATE
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return media.load_audio(buffer.getvalue())


def augment(audio: np.ndarray, rng: random.Random) -> tuple[np.ndarray, list[str]]:
    """A random chain of effects (at least one); returns the audio and what was done."""
    generator = np.random.default_rng(rng.getrandbits(32))
    effects: list[str] = []
    while not effects:
        if rng.random() < 0.5:
            factor = rng.uniform(0.85, 1.2)
            audio = change_speed(audio, factor)
            effects.append(f"speed {factor:.2f}")
        if rng.random() < 0.3:
            rt60 = rng.uniform(0.15, 0.7)
            audio = add_room(audio, rt60, generator)
            effects.append(f"room {rt60:.2f} s")
        if rng.random() < 0.4:
            snr, colour = rng.uniform(5, 30), rng.choice(("white", "brown"))
            audio = add_noise(audio, snr, generator, colour)
            effects.append(f"{colour} noise {snr:.0f} dB")
        if rng.random() < 0.25:
            audio = band_limit(audio)
            effects.append("telephone band")
        if rng.random() < 0.4:
            codec = rng.choice(CODECS)
            audio = codec_round_trip(audio, *codec)
            effects.append(f"{codec[0]}/{codec[1]}")
    gain = rng.uniform(0.3, 1.0) / (float(np.abs(audio).max()) or 1.0)  # a quiet or a loud microphone
    return (audio * gain).astype(np.float32), effects


def augment_spoken(root: str | os.PathLike, split: str, fraction: float, seed: int = 0, jobs: int = 2) -> int:
    """Replace `fraction` of the split's spoken questions (in {split}_spoken.json, chosen per
    question id) by augmented copies under spoken-hard/, and write the ASR manifest again from
    them. Idempotent: the originals stay, so a re-run with the same seed writes the same files.
    Returns how many were replaced."""
    from omniphi import media
    from omniphi.data.shapes import _dump, _write_asr_manifest
    from omniphi.data.tts import _write_wav

    root = Path(root)
    path = root / f"{split}_spoken.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    originals = root / f"{split}_spoken_clean.json"
    if originals.is_file():  # augmented before: start from the clean records again
        records = json.loads(originals.read_text(encoding="utf-8"))
    else:
        _dump(originals, records)
    (root / "spoken-hard").mkdir(exist_ok=True)
    chosen = []
    for record in records:
        rng = random.Random(f"augment:{seed}:{record['id']}")
        if rng.random() < fraction:
            chosen.append((record, rng))

    def work(item):
        record, rng = item
        audio, effects = augment(media.load_audio(root / record["audio"]), rng)
        rel = f"spoken-hard/{record['id']}.wav"
        _write_wav(root / rel, audio)
        record["audio"], record["augmented"] = rel, effects

    # Threads: FFmpeg, scipy and numpy do the work outside the GIL (~50 ms a clip on one core).
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(work, chosen))
    replaced = len(chosen)
    _dump(path, records)
    _write_asr_manifest(root / f"{split}_asr.jsonl", records)
    return replaced
