"""Safe decoding of untrusted images and audio.

Everything that reaches the model from outside (API requests, the web page, CLI arguments)
goes through here. The rules:

* Every failure is a :class:`MediaError` subclass (its type says what is wrong) with a short
  ``code``; Pillow/PyAV exceptions never escape untyped.
* Sizes are checked before work is done: bytes before parsing, image pixels from the header
  before decoding (decompression bombs), audio duration *while* decoding (a few KB of Opus
  can hold hours of audio, so the byte limit alone bounds nothing).
* Only a fixed set of container formats is handed to each decoder. Audio containers are
  sniffed from magic bytes and the FFmpeg demuxer is forced, so FFmpeg never probes its whole
  demuxer zoo (HLS/concat playlists can make it open other files or URLs).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import urllib.parse
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from omniphi.errors import UserError

__all__ = [
    "MediaError",
    "CorruptMediaError",
    "UnsupportedMediaError",
    "MediaTooLargeError",
    "MediaLimits",
    "DEFAULT_LIMITS",
    "SAMPLING_RATE",
    "load_image",
    "load_audio",
    "decode_data_uri",
    "audio_duration",
]

SAMPLING_RATE = 16_000


# --------------------------------------------------------------------------- errors


class MediaError(UserError, ValueError):
    """Base class: bad media supplied by the user. ``code`` names the problem for machines (the
    server puts it in its error body); the subclass says what kind of problem it is."""

    code: str = "invalid_media"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class CorruptMediaError(MediaError):
    """Undecodable, truncated or empty media."""

    code = "invalid_media"


class UnsupportedMediaError(MediaError):
    """Not an image/audio format we accept (or one we refuse to decode, e.g. too many channels)."""

    code = "unsupported_media_type"


class MediaTooLargeError(MediaError):
    """Over a limit: bytes, pixels or duration."""

    code = "media_too_large"


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 20 * 2**20
    # Checked from the header before decoding.
    max_image_pixels: int = 40_000_000
    max_audio_bytes: int = 25 * 2**20
    # Checked while decoding: decoding stops as soon as it is exceeded.
    max_audio_seconds: float = 300.0
    # Checked from the stream header and on every frame. 24 covers 22.2 surround; files with more
    # channels are lab recordings, not speech for an assistant.
    max_audio_channels: int = 24


DEFAULT_LIMITS = MediaLimits()


# --------------------------------------------------------------------------- sources


def _read_source(source, max_bytes: int, what: str) -> bytes:
    """Bytes of ``source`` (bytes-like or path), refusing more than ``max_bytes``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        nbytes = memoryview(source).nbytes
        if nbytes > max_bytes:  # before copying a bytearray/memoryview
            raise MediaTooLargeError(f"{what} is {nbytes} bytes, over the limit of {max_bytes} bytes")
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        # Raises FileNotFoundError / IsADirectoryError / PermissionError as is: those are
        # the caller's (CLI's) problem, not bad media.
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise MediaTooLargeError(
                    f"{what} is {size} bytes, over the limit of {max_bytes} bytes"
                )
            # Bounded read: st_size is 0 for pipes and may change under us.
            data = f.read(max_bytes + 1)
    else:
        raise TypeError(f"{what} source must be bytes or a path, not {type(source).__name__}")
    if len(data) > max_bytes:  # only for paths: we stopped reading at max_bytes + 1
        raise MediaTooLargeError(f"{what} is larger than the limit of {max_bytes} bytes")
    if not data:
        raise CorruptMediaError("empty file")
    return data


def _describe_error(exc: BaseException) -> str:
    """One line for an exception from a decoder (messages can be multi-line or empty)."""
    # FFmpegError's str() is "[Errno -1094995529] Invalid data ...: '<none>'"; strerror is the
    # readable part.
    text = getattr(exc, "strerror", None)
    text = " ".join(str(text if isinstance(text, str) and text else exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------- images

# Pillow format names we decode. MPO is what Pillow calls JPEGs from many phone cameras
# (extra preview frames appended); it is opened by the JPEG plugin.
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_ACCEPTED_IMAGE_NAMES = "PNG, JPEG, WebP, GIF, BMP, TIFF"


def _sniff_other(data: bytes) -> str | None:
    """Name a common non-image (or unaccepted) format, for a clearer 415 message."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV audio"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC image"
        if brand in (b"avif", b"avis"):
            return "AVIF image"
        return "MP4/M4A media"
    if head[:4] == b"OggS":
        return "Ogg audio"
    if head[:4] == b"fLaC":
        return "FLAC audio"
    if head[:3] == b"ID3":
        return "MP3 audio"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/Matroska media"
    if head[:5] == b"%PDF-":
        return "PDF document"
    if head.lstrip()[:5].lower() in (b"<?xml", b"<svg ") or b"<svg" in data[:1024].lower():
        return "SVG image"
    return None


def _open_image(data: bytes) -> Image.Image:
    """Open lazily (header only) with only the accepted plugins; map failures to MediaErrors."""
    try:
        return Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise MediaTooLargeError(f"image is a decompression bomb: {_describe_error(exc)}") from None
    except Image.DecompressionBombWarning as exc:  # raised because we made it an error
        raise MediaTooLargeError(f"image is a decompression bomb: {_describe_error(exc)}") from None
    except Image.UnidentifiedImageError:
        pass
    except Exception as exc:  # a plugin choked on a recognised but broken header
        raise CorruptMediaError(f"could not decode image: {_describe_error(exc)}") from None

    other = _sniff_other(data)
    if other is None:
        # Not one of ours: see whether another Pillow plugin recognises it (header only,
        # never decoded) so the message can name it, e.g. ICO or PSD.
        try:
            with Image.open(io.BytesIO(data)) as probe:
                other = f"{probe.format} image"
        except Exception:
            other = None
    if other is not None:
        raise UnsupportedMediaError(
            f"unsupported image format: {other} (accepted: {_ACCEPTED_IMAGE_NAMES})"
        )
    if _looks_like_accepted_image(data):
        raise CorruptMediaError("could not decode image: file is truncated or damaged")
    raise UnsupportedMediaError(
        f"not a recognised image format (accepted: {_ACCEPTED_IMAGE_NAMES})"
    )


def _looks_like_accepted_image(data: bytes) -> bool:
    """Magic bytes of an accepted format: a failure to open it means damage, not a wrong type."""
    return (
        data.startswith(b"\x89PNG")
        or data.startswith(b"\xff\xd8")
        or data.startswith((b"GIF87a", b"GIF89a"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or data.startswith(b"BM")
        or data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white (what a viewer shows)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        # Pillow's own convert() clamps these to 0..255 (a 16-bit photo turns white): scale.
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.uint32) * 255 + 32767) // 65535
        elif mode == "I":
            # 32-bit ints: 16-bit sources (TIFF/PNG via older paths) use 0..65535; anything
            # fitting in a byte is taken as is.
            arr8 = arr if arr.max(initial=0) <= 255 else arr.clip(0, 65535) * 255 // 65535
        else:
            # Float images: 0..1 if that is their range, else Pillow's 0..255 convention.
            finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            scale = 255.0 if finite.size and finite.max() <= 1.0 and finite.min() >= 0.0 else 1.0
            arr8 = np.rint(finite * scale)
        gray = Image.fromarray(np.clip(arr8, 0, 255).astype(np.uint8))  # 2-D uint8 → "L"
        return gray.convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(source, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode an untrusted image into an RGB ``PIL.Image`` (fully loaded, file closed).

    ``source`` is the file's bytes or a path. PNG, JPEG, WebP, GIF, BMP and TIFF are
    accepted; animated GIF/WebP give their first frame; EXIF orientation is applied; any mode
    (RGBA/LA/P with transparency composited on white, CMYK, 16-bit, ...) becomes RGB.

    Raises ``MediaTooLargeError`` (bytes or width×height over ``limits``, checked from the
    header before any pixel is decoded), ``CorruptMediaError`` (empty, truncated,
    undecodable), ``UnsupportedMediaError`` (another format). A path that does not exist
    raises ``FileNotFoundError`` (other ``OSError``s likewise), not a ``MediaError``.

    Pillow's own decompression-bomb warning/error (driven by the global
    ``Image.MAX_IMAGE_PIXELS``) is also treated as too large, so a ``max_image_pixels``
    above Pillow's threshold (~89 M) needs ``Image.MAX_IMAGE_PIXELS`` raised as well.
    """
    data = _read_source(source, limits.max_image_bytes, "image")
    # Note: catch_warnings swaps the process-wide filter list and is not thread-safe; the
    # worst a race can do is leave this one "error" filter installed, which is harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = _open_image(data)
        with im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise CorruptMediaError(f"image has invalid size {width}x{height}")
            pixels = width * height
            # Before load(): this is what keeps a 100000x100000 header from allocating 30 GB.
            if pixels > limits.max_image_pixels:
                raise MediaTooLargeError(
                    f"image is {width}x{height} = {pixels} pixels, "
                    f"over the limit of {limits.max_image_pixels}"
                )
            try:
                im.seek(0)  # first frame of animations (already current; explicit on purpose)
                im.load()
                # exif_transpose returns a new, independent image (a copy when no rotation).
                upright = ImageOps.exif_transpose(im)
                rgb = _to_rgb(upright)
                rgb.load()
            except MediaError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise MediaTooLargeError(
                    f"image is a decompression bomb: {_describe_error(exc)}"
                ) from None
            except MemoryError:
                raise MediaTooLargeError("image is too large to decode in memory") from None
            except Exception as exc:  # OSError("image file is truncated"), SyntaxError, ...
                raise CorruptMediaError(f"could not decode image: {_describe_error(exc)}") from None
    if rgb is im:  # never hand back the (now closed) lazily-opened object
        rgb = im.copy()
    return rgb


# --------------------------------------------------------------------------- audio

_ACCEPTED_AUDIO_NAMES = "WAV, FLAC, MP3, Ogg (Vorbis/Opus), WebM/Opus, M4A/AAC"


def _skip_id3(data: bytes) -> int:
    """Offset after a leading ID3v2 tag (MP3s often, FLAC/AAC sometimes start with one)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size_bytes = data[6:10]
    if any(b & 0x80 for b in size_bytes):
        return 0
    size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _sniff_audio(data: bytes) -> str:
    """The FFmpeg demuxer for ``data``, from magic bytes; raise for anything else."""
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM / Matroska
        return "matroska"
    if data[4:8] == b"ftyp":
        return "mp4"
    offset = _skip_id3(data)
    body = data[offset:offset + 4]
    if body[:4] == b"fLaC":
        return "flac"
    if len(body) >= 2 and body[0] == 0xFF:
        if body[1] & 0xF6 == 0xF0:  # ADTS: sync + layer bits 00
            return "aac"
        if body[1] & 0xE0 == 0xE0 and body[1] & 0x06:  # MPEG audio layer I/II/III
            return "mp3"
    if offset:  # an ID3 tag followed by something else: let the MP3 demuxer resync
        return "mp3"
    other = _sniff_other(data) or ("an image" if _looks_like_accepted_image(data) else None)
    if other is not None:
        raise UnsupportedMediaError(
            f"not an audio file (looks like {other}); accepted: {_ACCEPTED_AUDIO_NAMES}"
        )
    raise UnsupportedMediaError(
        f"not a recognised audio format (accepted: {_ACCEPTED_AUDIO_NAMES})"
    )


def load_audio(
    source,
    limits: MediaLimits = DEFAULT_LIMITS,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """Decode untrusted audio to float32 mono in [-1, 1] at ``sampling_rate`` (1-D array).

    ``source`` is the file's bytes or a path. Decoded with PyAV (FFmpeg) for every container:
    WAV, FLAC, MP3, Ogg/Vorbis, Ogg/Opus, WebM/Opus (browsers' MediaRecorder), M4A/AAC
    (AIFF too). The first audio stream is used; its channels are averaged down to mono.

    Raises ``MediaTooLargeError`` (bytes over ``limits.max_audio_bytes``; duration over
    ``limits.max_audio_seconds``, detected while decoding, which then stops),
    ``CorruptMediaError`` (empty, no audio stream, no samples, undecodable),
    ``UnsupportedMediaError`` (not a recognised audio container, e.g. an image). A path that
    does not exist raises ``FileNotFoundError`` (other ``OSError``s likewise).
    """
    if int(sampling_rate) != sampling_rate or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    sampling_rate = int(sampling_rate)
    data = _read_source(source, limits.max_audio_bytes, "audio")
    fmt = _sniff_audio(data)

    import av  # imported here: importing omniphi.media must stay cheap for image-only users

    max_samples = int(limits.max_audio_seconds * sampling_rate)
    chunks: list[np.ndarray] = []
    total = 0

    def take(frames) -> None:
        nonlocal total
        for out in frames:
            # Packed float, one plane of (n, channels) interleaved samples. Never planar: PyAV's
            # to_ndarray reads planar frames through the 8 fixed data pointers of AVFrame and
            # crashes the process (SIGSEGV) on 8 or more channels. Averaging the channels here
            # (as librosa and the HF feature extractors do) rather than letting swresample
            # downmix: its stereo->mono matrix sums at 0.707 per channel, which clips loud,
            # correlated stereo.
            channels = out.layout.nb_channels
            arr = out.to_ndarray().reshape(-1, channels)
            arr = arr[:, 0] if channels == 1 else arr.mean(axis=1, dtype=np.float32)
            total += arr.shape[0]
            if total > max_samples:
                raise MediaTooLargeError(
                    f"audio is longer than the {limits.max_audio_seconds:g} s limit"
                )
            chunks.append(arr)

    def check_channels(channels: int) -> None:
        if channels > limits.max_audio_channels:
            raise UnsupportedMediaError(
                f"audio has {channels} channels; at most {limits.max_audio_channels} are accepted",
                code="too_many_audio_channels",
            )

    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt, metadata_errors="replace") as container:
            streams = container.streams.audio
            if not streams:
                raise CorruptMediaError("file has no audio stream")
            stream = streams[0]
            check_channels(stream.codec_context.channels)  # before decoding anything
            resampler = None
            setup = None
            for frame in container.decode(stream):
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if key != setup:
                    # Streams can change layout mid-file (chained Ogg): the header check is not enough.
                    check_channels(frame.layout.nb_channels)
                    # PyAV's resampler is bound to its first input's format; chained Ogg
                    # streams or odd MP3s can change rate/layout mid-file: flush and renew.
                    if resampler is not None:
                        take(resampler.resample(None))
                    # frame_size: emit ~1 s chunks. Opus yields 20 ms frames and per-frame
                    # Python overhead (to_ndarray, list growth) otherwise doubles decode time;
                    # it also bounds how far past the duration limit we decode (≤ 1 s).
                    resampler = av.AudioResampler(
                        format="flt",
                        layout=frame.layout.name,
                        rate=sampling_rate,
                        frame_size=sampling_rate,
                    )
                    setup = key
                take(resampler.resample(frame))
            if resampler is not None:
                take(resampler.resample(None))
    except MediaError:
        raise
    except MemoryError:
        raise MediaTooLargeError("audio is too large to decode in memory") from None
    except Exception as exc:  # av.error.FFmpegError (InvalidDataError, ...), ValueError, ...
        raise CorruptMediaError(f"could not decode audio: {_describe_error(exc)}") from None

    if total == 0:
        raise CorruptMediaError("could not decode audio: it contains no samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    # Lossy decoders and resampling overshoot full scale slightly; callers rely on [-1, 1].
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio


def audio_duration(audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> float:
    """Seconds of ``audio`` (samples along the last axis) at ``sampling_rate``."""
    return float(np.shape(audio)[-1]) / float(sampling_rate)


# --------------------------------------------------------------------------- data: URIs

_WHITESPACE = re.compile(r"\s+")


def decode_data_uri(uri: str, max_bytes: int | None = None) -> tuple[str, bytes]:
    """Split an RFC 2397 ``data:`` URI into ``(media_type, payload)``.

    ``media_type`` is lower-case without parameters (``"audio/webm;codecs=opus"`` gives
    ``"audio/webm"``; an empty one gives RFC 2397's default ``"text/plain"``). Base64 and
    percent-encoded payloads are both accepted. Not a data URI / bad base64 →
    ``CorruptMediaError``; payload over ``max_bytes`` → ``MediaTooLargeError``, judged from
    the encoded length before anything is decoded.
    """
    if not isinstance(uri, str):
        raise CorruptMediaError(f"expected a data: URI string, got {type(uri).__name__}")
    if uri[:5].lower() != "data:":
        raise CorruptMediaError("not a data: URI")
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise CorruptMediaError("malformed data: URI (no ',' before the payload)")
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    media_type = params[0].lower() if params and params[0] else "text/plain"
    if "/" not in media_type or any(c.isspace() for c in media_type):
        raise CorruptMediaError(f"malformed data: URI media type {media_type!r}")

    if is_base64:
        if _WHITESPACE.search(payload):
            # Some encoders wrap lines; drop whitespace before sizing (C-speed regex).
            payload = _WHITESPACE.sub("", payload)
        if "%" in payload:  # base64 inside a URL may itself be percent-encoded ('+', '/', '=')
            payload = urllib.parse.unquote(payload)
        padding = len(payload) - len(payload.rstrip("="))
        decoded_len = len(payload) * 3 // 4 - padding
        if max_bytes is not None and decoded_len > max_bytes:
            raise MediaTooLargeError(
                f"data URI payload is {decoded_len} bytes, over the limit of {max_bytes} bytes"
            )
        body = payload.rstrip("=")
        if len(body) % 4 == 1:
            raise CorruptMediaError("invalid base64 in data URI (impossible length)")
        # Accept the URL-safe alphabet and missing padding, but nothing else.
        body = body.translate(str.maketrans("-_", "+/")) + "=" * (-len(body) % 4)
        try:
            data = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CorruptMediaError(f"invalid base64 in data URI: {_describe_error(exc)}") from None
    else:
        # Percent-decoding never grows the data, and the encoded text is already in memory.
        data = urllib.parse.unquote_to_bytes(payload)
        if max_bytes is not None and len(data) > max_bytes:
            raise MediaTooLargeError(
                f"data URI payload is {len(data)} bytes, over the limit of {max_bytes} bytes"
            )
    return media_type, data
