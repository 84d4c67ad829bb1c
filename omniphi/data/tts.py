"""Text-to-speech for synthetic spoken questions, by running an external command.

Two engines are known by name (both offline, in Debian): espeak-ng (many accents, robotic) and
flite (four clearer CMU voices; Whisper tiny.en transcribes them with a few % WER where it
mishears espeak-ng's voices a fifth of the time, measured on the shapes questions). The default,
``all`` (a VoiceMix), speaks each utterance with one of the two, half the time each: a model
trained on it hears both kinds of voice. Any program
works whose command line can be written as a template with ``{text}`` and ``{out}`` (and
optionally ``{voice}``, ``{rate}`` in words per minute, ``{stretch}`` = 175 / rate for programs
that take a duration factor) placeholders, e.g. ``piper --model en_US-lessac-medium.onnx --output_file {out} -- {text}``
(text on stdin is not supported). The template is split with ``shlex`` once and each argument
is formatted separately and run without a shell, so the text is always a single argument and
quotes or ``$(...)`` in it mean nothing.

Voices and rates vary per utterance, chosen deterministically from ``(seed, key)``. Results
are cached on disk as 16 kHz mono 16-bit WAV keyed by (command, voice, rate, text), so a
re-run (or a second dataset with the same questions) costs nothing, and the audio a training
run sees does not depend on whether it came from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from omniphi.data.llava import AUDIO_TOKEN, _PLACEHOLDER
from omniphi.errors import UserError

# "--" ends espeak-ng's options, so a question starting with "-" is not read as one.
DEFAULT_COMMAND = "espeak-ng -v {voice} -s {rate} -w {out} -- {text}"
FLITE_COMMAND = "flite -voice {voice} --setf duration_stretch={stretch} -o {out} -t {text}"

# English espeak-ng voices that exist in Debian's espeak-ng 1.51 (checked with
# `espeak-ng --voices=en` and by synthesising with each; the mbrola ones need extra packages).
# Accents plus "+variant" timbres (f = female-ish, m = male-ish formant settings).
ENGLISH_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-029",
    "en-us-nyc",
    "en+f3",
    "en+m3",
    "en-us+f2",
    "en-us+f4",
    "en-gb+m5",
)
# flite's built-in English voices: US female (slt), US male (rms), Scottish male (awb), US male
# diphone (kal16).
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
# Engine name → (command template, its voices).
ENGINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "espeak-ng": (DEFAULT_COMMAND, ENGLISH_VOICES),
    "flite": (FLITE_COMMAND, FLITE_VOICES),
}
# Every engine at once, half the utterances each (a VoiceMix): what the starter trains on, so
# that its spoken path meets clear and robotic voices, and what `omniphi data` speaks with by default.
ALL_ENGINES = "all"
DEFAULT_TTS = ALL_ENGINES
# Words per minute; espeak-ng's default is 175.
DEFAULT_RATES = tuple(range(130, 201, 10))

SAMPLING_RATE = 16_000


def program_not_found(program: str, alternatives: str) -> str:
    """The one-line error for a missing TTS program; for the known engines (Debian packages of the
    same name) it says how to install them."""
    how = f"`sudo apt-get install {program}` or `make system-deps`" if program in ENGINES else "install it"
    return f"TTS program not found: {program!r} ({how}; or {alternatives})"


class TTSError(UserError, RuntimeError):
    """The TTS command is missing, failed, or produced no usable audio."""


def default_cache_dir() -> Path:
    from omniphi.weights.cache import cache_dir

    return cache_dir() / "tts"


class Speaker:
    def __init__(
        self,
        command: str = DEFAULT_COMMAND,
        voices: Sequence[str] = ENGLISH_VOICES,
        rates: Sequence[int] = DEFAULT_RATES,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        timeout: float = 60.0,
    ):
        self.command = command
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("empty TTS command")
        joined = " ".join(self.argv)
        for needed in ("{text}", "{out}"):
            if needed not in joined:
                raise ValueError(f"TTS command must contain a {needed} placeholder: {command!r}")
        try:  # unknown placeholders fail now, not after an hour of data preparation
            [_fill(a, text="t", out="o", voice="v", rate=175) for a in self.argv]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad placeholder in TTS command {command!r}: {exc}") from None
        if not voices or not rates:
            raise ValueError("need at least one voice and one rate")
        self.voices = list(voices)
        self.rates = [int(r) for r in rates]
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.timeout = timeout

    # ---------------------------------------------------------------- choices and keys

    def choose(self, key: str) -> tuple[str, int]:
        """The (voice, rate) for utterance ``key``: a function of (seed, key) only, so it does
        not depend on the order or number of utterances synthesised before."""
        rng = random.Random(f"{self.seed}\x00{key}")  # str seeds hash with SHA-512: stable
        return rng.choice(self.voices), rng.choice(self.rates)

    def cache_key(self, text: str, voice: str, rate: int) -> str:
        blob = json.dumps([self.command, voice, int(rate), _clean(text)], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def cache_path(self, text: str, voice: str, rate: int) -> Path:
        key = self.cache_key(text, voice, rate)
        return self.cache_dir / key[:2] / f"{key}.wav"

    # ---------------------------------------------------------------- synthesis

    def synthesize(self, text: str, voice: str, rate: int) -> Path:
        """Path of the cached 16 kHz WAV of ``text`` (running the command on a miss)."""
        path = self.cache_path(text, voice, rate)
        if path.exists():
            return path
        audio = self._run(_clean(text), voice, int(rate))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Complete or absent: concurrent workers may synthesise the same entry.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        _write_wav(tmp, audio)
        os.replace(tmp, path)
        return path

    def _run(self, text: str, voice: str, rate: int) -> np.ndarray:
        from omniphi import media

        if not text:
            raise TTSError("cannot speak an empty text")
        with tempfile.TemporaryDirectory(prefix="omniphi-tts-") as tmp:
            out = os.path.join(tmp, "out.wav")
            argv = [_fill(a, text=text, out=out, voice=voice, rate=rate) for a in self.argv]
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise TTSError(program_not_found(argv[0], "pass another --tts-command")) from None
            except subprocess.TimeoutExpired:
                raise TTSError(f"TTS command timed out after {self.timeout:g} s: {argv[0]}") from None
            err = " ".join(proc.stderr.decode("utf-8", "replace").split())[-300:]
            if proc.returncode != 0:
                raise TTSError(f"TTS command failed (exit {proc.returncode}) for voice {voice!r}: {err or 'no message'}")
            if not os.path.exists(out) or os.path.getsize(out) == 0:
                # espeak-ng exits 0 with a missing mbrola voice, printing only a message.
                raise TTSError(f"TTS command wrote no audio for voice {voice!r}: {err or 'no message'}")
            try:
                return media.load_audio(out)  # any format the command writes, resampled to 16 kHz mono
            except media.MediaError as exc:
                raise TTSError(f"TTS output is not usable audio: {exc}") from None

    def speak(self, text: str, voice: str | None = None, rate: int | None = None, key: str | None = None) -> np.ndarray:
        """16 kHz mono float32 audio of ``text``; voice/rate default to ``choose(key or text)``."""
        voice, rate = self._pick(text, voice, rate, key)
        return _read_wav(self.synthesize(text, voice, rate))

    def speak_to_file(self, text: str, dest: str | os.PathLike, voice: str | None = None,
                      rate: int | None = None, key: str | None = None) -> tuple[str, int]:
        voice, rate = self._pick(text, voice, rate, key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.synthesize(text, voice, rate), dest)
        return voice, rate

    def _pick(self, text, voice, rate, key) -> tuple[str, int]:
        chosen_voice, chosen_rate = self.choose(key if key is not None else _clean(text))
        return voice or chosen_voice, int(rate or chosen_rate)


class VoiceMix:
    """Several engines as one speaker: each utterance picks an engine (uniformly, so an engine with
    many voices does not crowd out one with few), then one of its voices and a rate. Voices are
    named "engine:voice" ("flite:slt", "espeak-ng:en-gb"); files are cached by each engine's Speaker."""

    def __init__(self, engines: Sequence[str] = tuple(ENGINES), rates: Sequence[int] = DEFAULT_RATES, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, timeout: float = 60.0):
        unknown = [e for e in engines if e not in ENGINES]
        if unknown or not engines:
            raise ValueError(f"unknown TTS engines {unknown}: expected some of {', '.join(ENGINES)}")
        self.speakers = {e: Speaker(ENGINES[e][0], ENGINES[e][1], rates, seed, cache_dir, timeout) for e in engines}
        self.engines = list(engines)
        self.voices = [f"{e}:{v}" for e in self.engines for v in self.speakers[e].voices]
        self.rates = [int(r) for r in rates]
        self.seed = seed
        self.command = " | ".join(s.command for s in self.speakers.values())  # what metadata records
        self.programs = [s.argv[0] for s in self.speakers.values()]

    def choose(self, key: str) -> tuple[str, int]:
        rng = random.Random(f"{self.seed}\x00mix\x00{key}")
        engine = rng.choice(self.engines)
        return f"{engine}:{rng.choice(self.speakers[engine].voices)}", rng.choice(self.rates)

    def _split(self, voice: str) -> tuple[Speaker, str]:
        engine, _, name = voice.partition(":")
        if engine not in self.speakers or not name:
            raise ValueError(f"voice {voice!r} is not 'engine:voice' with an engine of this mix ({', '.join(self.engines)})")
        return self.speakers[engine], name

    def cache_key(self, text: str, voice: str, rate: int) -> str:
        speaker, name = self._split(voice)
        return speaker.cache_key(text, name, rate)

    def speak(self, text: str, voice: str | None = None, rate: int | None = None, key: str | None = None) -> np.ndarray:
        voice, rate = self._pick(text, voice, rate, key)
        speaker, name = self._split(voice)
        return speaker.speak(text, name, rate)

    def speak_to_file(self, text: str, dest: str | os.PathLike, voice: str | None = None,
                      rate: int | None = None, key: str | None = None) -> tuple[str, int]:
        voice, rate = self._pick(text, voice, rate, key)
        speaker, name = self._split(voice)
        speaker.speak_to_file(text, dest, name, rate)
        return voice, rate

    def _pick(self, text, voice, rate, key) -> tuple[str, int]:
        chosen_voice, chosen_rate = self.choose(key if key is not None else _clean(text))
        return voice or chosen_voice, int(rate or chosen_rate)


def make_speaker(tts: str = DEFAULT_TTS, voices: Sequence[str] | None = None, rates: Sequence[int] | None = None,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 command: str | None = None) -> "Speaker | VoiceMix":
    """The speaker `omniphi data` and the starter build use: an engine by name (its voices unless
    `voices` says otherwise), ALL_ENGINES for the mix, or any `command` template."""
    rates = rates or DEFAULT_RATES
    if command is None and tts == ALL_ENGINES:
        if voices:
            raise ValueError(f"--voices needs one engine, not --tts {ALL_ENGINES}")
        return VoiceMix(tuple(ENGINES), rates, seed, cache_dir)
    if command is None and tts not in ENGINES:
        raise ValueError(f"unknown TTS engine {tts!r}: expected {ALL_ENGINES} or one of {', '.join(ENGINES)}")
    engine_command, engine_voices = ENGINES.get(tts, (DEFAULT_COMMAND, ENGLISH_VOICES))
    return Speaker(command or engine_command, list(voices or engine_voices), rates, seed, cache_dir)


def speaker_programs(speaker) -> list[str]:
    """The programs a speaker runs (to check they are installed before an hour of work)."""
    return list(speaker.programs) if isinstance(speaker, VoiceMix) else [speaker.argv[0]]


def _fill(template: str, text: str, out: str, voice: str, rate: int) -> str:
    return template.format(text=text, out=out, voice=voice, rate=rate, stretch=f"{175 / rate:.3f}")


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), pcm, SAMPLING_RATE, subtype="PCM_16", format="WAV")


def _read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    assert sr == SAMPLING_RATE, f"{path}: cached TTS audio at {sr} Hz"
    return audio


# --------------------------------------------------------------------------- samples


def question_text(parts: Iterable[dict[str, Any]]) -> str:
    return " ".join(p["text"] for p in parts if p["type"] == "text" and p["text"].strip())


class SpokenDataset:
    """Wraps a dataset of conversation samples: the first user turn's text is replaced by its
    speech (media parts stay, the audio part follows them). Skip markers pass through; a
    sample whose first user turn has no text is returned unchanged."""

    def __init__(self, dataset, speaker: Speaker):
        self.dataset = dataset
        self.speaker = speaker

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if not sample:
            return sample
        messages = [dict(m) for m in sample["messages"]]
        for m in messages:
            if m["role"] != "user":
                continue
            parts = list(m["content"]) if not isinstance(m["content"], str) else [{"type": "text", "text": m["content"]}]
            text = question_text(parts)
            if text:
                audio = self.speaker.speak(text, key=str(sample["id"]))
                m["content"] = [p for p in parts if p["type"] != "text"] + [{"type": "audio", "audio": audio}]
                meta = dict(sample.get("meta") or {})
                meta["spoken_text"] = text
                return {**sample, "messages": messages, "meta": meta}
            break
        return sample


def spoken_conversations(dataset, speaker: Speaker) -> SpokenDataset:
    """LLaVA conversations whose first question is audio (synthesised lazily, cached)."""
    return SpokenDataset(dataset, speaker)


# --------------------------------------------------------------------------- LLaVA JSON records


def _first_human(record: dict[str, Any]) -> int | None:
    from omniphi.data.llava import ROLES

    for i, turn in enumerate(record.get("conversations") or []):
        if isinstance(turn, dict) and ROLES.get(str(turn.get("from", turn.get("role"))).lower()) == "user":
            return i
    return None


def spoken_records(
    records: Sequence[dict[str, Any]],
    speaker: Speaker,
    audio_dir: str | os.PathLike,
    relative_to: str | os.PathLike,
    jobs: int = 1,
) -> tuple[list[dict[str, Any]], int]:
    """LLaVA JSON records → spoken ones: the first human turn's text is synthesised into a WAV
    under ``audio_dir`` (named by its cache key, so identical utterances share one file) and
    the turn becomes its media placeholders followed by ``<audio>``; the record's ``audio``
    field lists the path relative to ``relative_to``. Returns (records, number left unchanged
    because their first question had no text)."""
    audio_dir, relative_to = Path(audio_dir), Path(relative_to)
    plans = []  # (record index, text, voice, rate, file name) or None
    for k, record in enumerate(records):
        h = _first_human(record)
        value = record["conversations"][h].get("value", record["conversations"][h].get("content")) if h is not None else None
        text = _clean(_PLACEHOLDER.sub(" ", value)) if isinstance(value, str) else ""
        if not text:
            plans.append(None)
            continue
        voice, rate = speaker.choose(str(record.get("id", k)))
        plans.append((h, value, text, voice, rate, f"{speaker.cache_key(text, voice, rate)[:20]}.wav"))

    todo = {}
    for plan in plans:
        if plan is not None and plan[5] not in todo and not (audio_dir / plan[5]).exists():
            todo[plan[5]] = plan
    audio_dir.mkdir(parents=True, exist_ok=True)

    def work(plan):
        _, _, text, voice, rate, name = plan
        speaker.speak_to_file(text, audio_dir / name, voice=voice, rate=rate)

    # Threads suffice: the work is in the TTS subprocess and FFmpeg, both outside the GIL.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for _ in pool.map(work, sorted(todo.values(), key=lambda p: p[5])):
            pass

    out, unchanged = [], 0
    for record, plan in zip(records, plans):
        if plan is None:
            out.append(record)
            unchanged += 1
            continue
        h, value, text, voice, rate, name = plan
        placeholders = _PLACEHOLDER.findall(value)
        audios = record.get("audio") or []
        audios = [audios] if isinstance(audios, str) else list(audios)
        # This is the first user turn, so its own <audio> clips are the first ones; ours follows.
        before = placeholders.count(AUDIO_TOKEN)
        rel = os.path.relpath(audio_dir / name, relative_to)
        new = dict(record)
        new["conversations"] = [dict(t) for t in record["conversations"]]
        new["conversations"][h]["value"] = "\n".join(placeholders + [AUDIO_TOKEN])
        new["conversations"][h].pop("content", None)
        audios = audios[:before] + [rel] + audios[before:]
        new["audio"] = audios[0] if len(audios) == 1 else audios
        new["spoken_text"], new["voice"], new["rate"] = text, voice, rate
        out.append(new)
    return out, unchanged
