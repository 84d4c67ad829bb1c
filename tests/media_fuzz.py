"""Hostile media for `omniphi.media`, decoded in this process (run by tests/test_media_fuzz.py in a
subprocess, so that a crash of a native decoder fails the test instead of killing pytest).

Audio is made with PyAV (every container `load_audio` accepts, channel counts 1-64, several sample
formats and rates), images with Pillow; each file is also decoded truncated and with flipped bits.
Prints one JSON line per case *before* decoding it, then its outcome, so the parent can name the
case that crashed. Outcomes: "ok" (a valid result) or the MediaError's class name; anything else is
printed as "BUG ..." and makes the exit status 1.
"""

from __future__ import annotations

import io
import json
import sys

import av
import numpy as np
from PIL import Image

from omniphi.media import MediaError, MediaLimits, load_audio, load_image

SECONDS = 0.2
LIMITS = MediaLimits(max_audio_seconds=5.0, max_image_pixels=4_000_000)


def layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, f"{channels} channels")


def encode_audio(container: str, codec: str, sample_format: str, rate: int, channels: int) -> bytes:
    """A short noise clip, made with PyAV's encoders."""
    buf = io.BytesIO()
    rng = np.random.default_rng(channels * 1000 + rate)
    n = int(SECONDS * rate)
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout(channels))
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        stream.format = sample_format
        fmt = av.AudioFormat(sample_format)
        noise = rng.uniform(-0.5, 0.5, size=(channels, n))
        if fmt.name.startswith("s16"):
            samples = (noise * 32767).astype(np.int16)
        elif fmt.name.startswith("s32"):
            samples = (noise * 2**31).astype(np.int32)
        elif fmt.name.startswith("u8"):
            samples = (noise * 127 + 128).astype(np.uint8)
        else:
            samples = noise.astype(np.float32)
        if not fmt.is_planar:
            samples = samples.T.reshape(1, -1)  # interleaved
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=sample_format,
                                           layout=layout(channels))
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def audio_cases():
    # Uncompressed: every channel count, the PCM sample formats.
    for channels in (1, 2, 3, 6, 7, 8, 9, 12, 16, 24, 25, 32, 48, 64):
        yield f"wav s16 {channels}ch", encode_audio("wav", "pcm_s16le", "s16", 16000, channels)
    for codec, fmt in (("pcm_u8", "u8"), ("pcm_s32le", "s32"), ("pcm_f32le", "flt")):
        for channels in (1, 8, 9, 33):
            yield f"wav {fmt} {channels}ch", encode_audio("wav", codec, fmt, 22050, channels)
    for channels in (1, 9):
        yield f"aiff {channels}ch", encode_audio("aiff", "pcm_s16be", "s16", 8000, channels)
    # Compressed containers, at the channel counts their encoders take.
    for rate in (8000, 44100, 96000):
        yield f"flac {rate}", encode_audio("flac", "flac", "s16", rate, 2)
    for channels in (1, 6, 8):
        yield f"flac {channels}ch", encode_audio("flac", "flac", "s32", 48000, channels)
    yield "mp3 stereo", encode_audio("mp3", "libmp3lame", "fltp", 44100, 2)
    # FFmpeg's own Vorbis encoder (PyAV's wheels have no libvorbis) takes stereo only.
    yield "ogg vorbis stereo", encode_audio("ogg", "vorbis", "fltp", 44100, 2)
    for channels in (1, 2, 6):
        yield f"ogg opus {channels}ch", encode_audio("ogg", "libopus", "flt", 48000, channels)
        yield f"m4a aac {channels}ch", encode_audio("mp4", "aac", "fltp", 44100, channels)
    yield "webm opus", encode_audio("webm", "libopus", "flt", 48000, 1)
    yield "webm opus 8ch", encode_audio("webm", "libopus", "flt", 48000, 8)


def image_cases():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    for fmt, mode in (("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "CMYK"),
                      ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "F")):
        image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "I")
        if mode == "I;16":
            image = Image.fromarray((pixels[..., 0].astype(np.uint16) * 257))
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        yield f"{fmt} {mode}", buf.getvalue()


def damaged(name: str, data: bytes):
    """The file itself, truncated at several points, and with bits flipped (seeded)."""
    yield name, data
    for fraction in (0.05, 0.3, 0.7, 0.97):
        yield f"{name} truncated at {fraction}", data[: max(1, int(len(data) * fraction))]
    rng = np.random.default_rng(len(data))
    for trial in range(4):
        flipped = bytearray(data)
        for position in rng.integers(0, len(data), size=1 + trial * 4):
            flipped[position] ^= 1 << int(rng.integers(0, 8))
        yield f"{name} {1 + trial * 4} bit(s) flipped #{trial}", bytes(flipped)


def check_audio(audio) -> None:
    assert isinstance(audio, np.ndarray) and audio.ndim == 1 and audio.dtype == np.float32, audio
    assert audio.size > 0 and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def check_image(image) -> None:
    assert image.mode == "RGB" and image.size[0] > 0 and image.size[1] > 0, image
    image.tobytes()


def main() -> int:
    failures = 0
    kinds = [("audio", audio_cases, load_audio, check_audio), ("image", image_cases, load_image, check_image)]
    for kind, cases, load, check in kinds:
        for base_name, base in cases():
            for name, data in damaged(f"{kind} {base_name}", base):
                print(json.dumps({"case": name}), flush=True)
                try:
                    check(load(data, LIMITS))
                    outcome = "ok"
                except MediaError as error:
                    outcome = type(error).__name__
                    assert "\n" not in str(error), str(error)
                except Exception as error:  # noqa: BLE001 — the point: nothing untyped may escape
                    outcome = f"BUG {type(error).__name__}: {error}"
                    failures += 1
                print(json.dumps({"case": name, "outcome": outcome}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
