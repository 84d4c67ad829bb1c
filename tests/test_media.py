"""Tests for omniphi.media: decoding untrusted images and audio safely, with limits."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageFile

from omniphi import media
from omniphi.media import (
    CorruptMediaError,
    MediaError,
    MediaLimits,
    MediaTooLargeError,
    UnsupportedMediaError,
    audio_duration,
    decode_data_uri,
    load_audio,
    load_image,
)

SPEECH = Path(__file__).parent / "fixtures" / "speech"
AUDIO_FIXTURES = ["wav", "mp3", "flac", "ogg", "opus", "webm", "m4a"]


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _write_silent_opus_webm(path: Path, seconds: float) -> None:
    """Silence as WebM/Opus, written with PyAV (no ffmpeg program needed): a few bytes a second."""
    import av

    rate, frame_samples = 48_000, 2_880  # 60 ms frames: the cheapest Opus setting
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=rate, options={"frame_duration": "60", "compression_level": "0"})
        stream.bit_rate = 6_000
        stream.layout = "mono"
        silence = np.zeros((1, frame_samples), dtype=np.int16)
        for index in range(int(seconds * rate / frame_samples)):
            frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, index * frame_samples
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _write_video_only_mkv(path: Path) -> None:
    """A Matroska file with one tiny MJPEG video stream and no audio stream."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        red = np.zeros((16, 16, 3), np.uint8)
        red[..., 0] = 255
        for _ in range(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(red, format="rgb24")))
        out.mux(stream.encode(None))


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares width x height but carries one row of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 1000))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _noise_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Record any attempt to decode pixels: bombs must be refused from the header alone."""
    calls = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --------------------------------------------------------------------------- errors


def test_error_classes_carry_a_code_that_a_raise_site_may_refine():
    assert issubclass(MediaError, ValueError)
    for cls, code in [
        (CorruptMediaError, "invalid_media"),
        (UnsupportedMediaError, "unsupported_media_type"),
        (MediaTooLargeError, "media_too_large"),
    ]:
        err = cls("x")
        assert isinstance(err, MediaError)
        assert err.code == code
        assert cls("x", code="more_precise").code == "more_precise"
        assert cls("x").code == code  # the refinement is per instance


# --------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def reference_speech():
    return load_audio(SPEECH / "capital.wav")


def test_speech_fixtures_exist_and_are_small():
    files = {p.name for p in SPEECH.iterdir()}
    assert {f"capital.{ext}" for ext in AUDIO_FIXTURES} | {"fox.wav", "README.md"} <= files
    assert sum(p.stat().st_size for p in SPEECH.iterdir()) < 600 * 1024
    info = sf.info(SPEECH / "capital.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


@pytest.mark.parametrize("ext", AUDIO_FIXTURES)
def test_every_audio_format_decodes_to_the_same_clip(ext, reference_speech):
    audio = load_audio(SPEECH / f"capital.{ext}")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.all(np.abs(audio) <= 1.0)
    assert audio_duration(audio) == pytest.approx(audio_duration(reference_speech), abs=0.1)
    assert 1.7 < audio_duration(audio) < 2.0  # "What is the capital of France?" ≈ 1.83 s
    # Lossy codecs change the waveform but not the loudness of speech by much.
    assert _rms(audio) == pytest.approx(_rms(reference_speech), rel=0.15)
    assert _rms(audio) > 0.02  # actually speech, not silence


def test_audio_bytes_and_path_give_identical_results():
    path = SPEECH / "capital.webm"
    np.testing.assert_array_equal(load_audio(path), load_audio(path.read_bytes()))
    np.testing.assert_array_equal(load_audio(str(path)), load_audio(bytearray(path.read_bytes())))


def test_fox_fixture_length():
    assert 2.7 < audio_duration(load_audio(SPEECH / "fox.wav")) < 3.1


def test_stereo_44k1_becomes_mono_16k_with_right_length_and_level(tmp_path):
    rate, seconds = 44_100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone, tone], axis=1), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32_000) <= 16  # 2 s at 16 kHz, within a ms
    # Channels are averaged (not summed at 0.707 each, which would clip loud stereo).
    assert np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.01)
    # One channel only: averaged with silence.
    sf.write(path, np.stack([tone, np.zeros_like(tone)], axis=1), rate, subtype="PCM_16")
    assert np.max(np.abs(load_audio(path))) == pytest.approx(0.25, abs=0.01)


def test_output_is_clipped_to_unit_range():
    # Float WAVs (and lossy decoders, resamplers) can exceed full scale; callers rely on [-1, 1].
    buf = io.BytesIO()
    sf.write(buf, np.full(1600, 1.5, dtype=np.float32), 16_000, format="WAV", subtype="FLOAT")
    audio = load_audio(buf.getvalue())
    assert audio.max() == 1.0 and len(audio) == 1600


def test_custom_sampling_rate():
    audio = load_audio(SPEECH / "capital.wav", sampling_rate=8000)
    assert audio_duration(audio, 8000) == pytest.approx(1.834, abs=0.01)
    assert audio_duration(np.zeros(8000), 8000) == 1.0


def test_audio_over_duration_limit_stops_decoding_early(monkeypatch):
    import av

    produced = []
    real = av.AudioResampler

    class CountingResampler:  # counts what the decoder actually produced
        def __init__(self, *args, **kwargs):
            self._r = real(*args, **kwargs)

        def resample(self, frame):
            out = self._r.resample(frame)
            produced.extend(f.samples for f in out)
            return out

    monkeypatch.setattr(av, "AudioResampler", CountingResampler)
    clip = _wav(0.1 * np.ones(10 * 16_000), 16_000)
    assert len(load_audio(clip, MediaLimits(max_audio_seconds=10.0))) == 160_000  # at the limit: fine
    produced.clear()
    with pytest.raises(MediaTooLargeError, match="longer than the 1 s limit") as exc:
        load_audio(clip, MediaLimits(max_audio_seconds=1.0))
    assert exc.value.code == "media_too_large"
    # Stopped within a chunk (1 s) of the limit, not after decoding all 10 s.
    assert 16_000 < sum(produced) <= 2.5 * 16_000
    with pytest.raises(MediaTooLargeError, match="longer than the 2.5 s limit"):
        load_audio(SPEECH / "fox.wav", MediaLimits(max_audio_seconds=2.5))


def test_long_low_bitrate_audio_rejected_with_default_limits(tmp_path):
    # 400 s of silence as WebM/Opus is a few KB: the byte limit cannot catch it, duration must.
    path = tmp_path / "long.webm"
    _write_silent_opus_webm(path, seconds=400)
    assert path.stat().st_size < media.DEFAULT_LIMITS.max_audio_bytes // 100
    with pytest.raises(MediaTooLargeError, match="300 s limit") as exc:
        load_audio(path)
    assert exc.value.code == "media_too_large"


def test_audio_over_byte_limit(tmp_path):
    data = (SPEECH / "capital.wav").read_bytes()
    limits = MediaLimits(max_audio_bytes=1000)
    for source in (data, SPEECH / "capital.wav"):
        with pytest.raises(MediaTooLargeError, match="over the limit of 1000 bytes") as exc:
            load_audio(source, limits)
        assert exc.value.code == "media_too_large"


def test_empty_audio(tmp_path):
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    for source in (b"", empty):
        with pytest.raises(CorruptMediaError, match="empty file") as exc:
            load_audio(source)
        assert exc.value.code == "invalid_media"


def test_wav_with_zero_samples_is_corrupt():
    with pytest.raises(CorruptMediaError, match="no samples") as exc:
        load_audio(_wav(np.zeros(0), 16_000))
    assert exc.value.code == "invalid_media"


def test_container_without_audio_stream_is_corrupt(tmp_path):
    path = tmp_path / "video_only.mkv"
    _write_video_only_mkv(path)
    with pytest.raises(CorruptMediaError, match="no audio stream") as exc:
        load_audio(path)
    assert exc.value.code == "invalid_media"


def test_non_audio_is_rejected_with_a_clear_message():
    png = _encode(Image.new("RGB", (8, 8), "red"), "PNG")
    with pytest.raises(UnsupportedMediaError, match="not an audio file") as exc:
        load_audio(png)
    assert exc.value.code == "unsupported_media_type"
    for seed in range(3):
        noise = np.random.default_rng(seed).bytes(5000)
        with pytest.raises((CorruptMediaError, UnsupportedMediaError)) as exc:
            load_audio(noise)
        assert exc.value.code in ("invalid_media", "unsupported_media_type")
        assert "\n" not in str(exc.value)


def test_damaged_audio_raises_typed_error():
    # A WAV header that lies (claims a RIFF/WAVE but has no fmt data) → FFmpeg error, mapped.
    with pytest.raises(CorruptMediaError, match="could not decode audio") as exc:
        load_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert exc.value.code == "invalid_media"
    assert "Errno" not in str(exc.value)


def test_audio_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.wav")


# --------------------------------------------------------------------------- images


def test_rgba_png_composited_on_white():
    arr = np.zeros((10, 20, 4), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0, 255)  # opaque red
    arr[:, 10:] = (0, 0, 255, 0)  # fully transparent (colour must not leak through)
    arr[0, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    im = load_image(_encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert (im.mode, im.size) == ("RGB", (20, 10))
    assert im.getpixel((5, 5)) == (255, 0, 0)
    assert im.getpixel((15, 5)) == (255, 255, 255)
    assert all(abs(c - 127) <= 2 for c in im.getpixel((0, 0)))


def test_palette_png_with_transparency():
    im = Image.new("P", (6, 4), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 3, 4))  # left half index 1 (red), right half index 0 (transparent green)
    out = load_image(_encode(im, "PNG", transparency=0))
    assert (out.mode, out.size) == ("RGB", (6, 4))
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert out.getpixel((5, 1)) == (255, 255, 255)
    # Without transparency the palette colour itself is used.
    assert load_image(_encode(im, "PNG")).getpixel((5, 1)) == (0, 255, 0)


def test_la_and_cmyk_jpeg():
    la = load_image(_encode(Image.new("LA", (5, 5), (0, 0)), "PNG"))
    assert la.mode == "RGB" and la.getpixel((2, 2)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_encode(cmyk, "JPEG", quality=95))
    assert (out.mode, out.size) == ("RGB", (16, 8))
    r, g, b = out.getpixel((8, 4))
    assert r > 230 and g < 30 and b < 30


def test_jpeg_exif_orientation_6_is_applied():
    # Stored 40 wide x 20 high, red block at the top-left. Orientation 6 = "rotate 90° CW to
    # display": the result is 20x40 and the red block ends up at the top-right.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:] = (0, 0, 255)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_encode(Image.fromarray(arr, "RGB"), "JPEG", quality=95, exif=exif))
    assert out.size == (20, 40)
    r, g, b = out.getpixel((17, 2))
    assert r > 200 and b < 60
    r, g, b = out.getpixel((2, 2))
    assert b > 200 and r < 60


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (12, 10), c) for c in ("red", "lime", "blue")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = load_image(data)
    assert (out.mode, out.size) == ("RGB", (12, 10))
    assert out.getpixel((5, 5)) == (255, 0, 0)


def test_webp_still_and_animated():
    arr = np.zeros((8, 10, 4), dtype=np.uint8)
    arr[..., 1] = 255
    arr[..., 3] = 255
    arr[:, 5:, 3] = 0  # transparent right half → white
    out = load_image(_encode(Image.fromarray(arr, "RGBA"), "WEBP", lossless=True))
    assert (out.mode, out.size) == ("RGB", (10, 8))
    assert out.getpixel((2, 2)) == (0, 255, 0)
    assert out.getpixel((8, 2)) == (255, 255, 255)

    frames = [Image.new("RGB", (10, 8), c) for c in ("blue", "red")]
    data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=50)
    out = load_image(data)
    assert (out.mode, out.size) == ("RGB", (10, 8))
    assert out.getpixel((5, 4)) == (0, 0, 255)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535, 257 * 10]], dtype=np.uint16).repeat(3, axis=0)
    src = Image.fromarray(arr)
    assert src.mode.startswith("I;16")
    out = load_image(_encode(src, "PNG"))
    assert (out.mode, out.size) == ("RGB", (4, 3))
    assert [out.getpixel((x, 1)) for x in range(4)] == [(0, 0, 0), (128,) * 3, (255,) * 3, (10,) * 3]


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG", "JPEG"])
def test_other_accepted_formats(fmt, tmp_path):
    src = Image.new("RGB", (7, 5), (10, 200, 30))
    path = tmp_path / f"x.{fmt.lower()}"
    src.save(path, fmt)
    out = load_image(path)
    assert (out.mode, out.size) == ("RGB", (7, 5))
    assert all(abs(a - b) <= 6 for a, b in zip(out.getpixel((3, 2)), (10, 200, 30)))


def test_returned_image_is_independent_of_the_source():
    out = load_image(_encode(Image.new("RGB", (4, 4), "red"), "PNG"))
    out.putpixel((0, 0), (1, 2, 3))  # loaded, writable, file closed
    assert np.asarray(out).shape == (4, 4, 3)


def test_decompression_bomb_header_refused_without_decoding(no_pixel_decoding):
    bomb = _png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(MediaTooLargeError) as exc:
        load_image(bomb)
    assert exc.value.code == "media_too_large"
    assert "\n" not in str(exc.value)
    assert no_pixel_decoding == []


def test_pixel_limit_is_ours_not_pillows(no_pixel_decoding, monkeypatch):
    # 8000x8000 = 64 M: over our 40 M default but under Pillow's own warning threshold, and with
    # Pillow's global check switched off entirely. Were it decoded, the missing rows would make it
    # "corrupt", so getting "too large" proves the header check came first.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(MediaTooLargeError) as exc:
        load_image(_png_header_only(8000, 8000))
    assert str(exc.value) == "image is 8000x8000 = 64000000 pixels, over the limit of 40000000"
    assert exc.value.code == "media_too_large"
    assert no_pixel_decoding == []


def test_pixel_limit_on_a_real_image():
    data = _encode(Image.new("RGB", (300, 300), "white"), "PNG")
    assert load_image(data).size == (300, 300)
    with pytest.raises(MediaTooLargeError, match="300x300 = 90000 pixels, over the limit of 10000") as exc:
        load_image(data, MediaLimits(max_image_pixels=10_000))
    assert exc.value.code == "media_too_large"


@pytest.mark.parametrize("pixels", [1600, 3000])  # Pillow warns above MAX, errors above 2×MAX
def test_pillow_decompression_bomb_warning_and_error_map_to_too_large(monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encode(Image.new("RGB", (pixels // 40, 40), "white"), "PNG")
    with pytest.raises(MediaTooLargeError, match="decompression bomb") as exc:
        load_image(data)
    assert exc.value.code == "media_too_large"


def test_image_over_byte_limit(tmp_path):
    data = _encode(_noise_rgb(64, 64), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    limits = MediaLimits(max_image_bytes=len(data) - 1)
    for source in (data, path):
        with pytest.raises(MediaTooLargeError, match=f"over the limit of {len(data) - 1} bytes") as exc:
            load_image(source, limits)
        assert exc.value.code == "media_too_large"
    assert load_image(data, MediaLimits(max_image_bytes=len(data))).size == (64, 64)


def test_truncated_images_are_corrupt():
    jpeg = _encode(_noise_rgb(128, 96), "JPEG", quality=90)
    png = _encode(_noise_rgb(128, 96), "PNG")
    for data in (jpeg[: len(jpeg) // 2], png[: len(png) // 2], png[:20]):
        with pytest.raises(CorruptMediaError, match="could not decode image") as exc:
            load_image(data)
        assert exc.value.code == "invalid_media"
        assert "\n" not in str(exc.value)


def test_empty_image(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for source in (b"", empty, str(empty)):
        with pytest.raises(CorruptMediaError, match="empty file") as exc:
            load_image(source)
        assert exc.value.code == "invalid_media"


def test_random_bytes_image():
    for seed in range(3):
        with pytest.raises((CorruptMediaError, UnsupportedMediaError)) as exc:
            load_image(np.random.default_rng(seed).bytes(5000))
        assert exc.value.code in ("invalid_media", "unsupported_media_type")


def test_unsupported_formats_are_415():
    ico = _encode(Image.new("RGB", (16, 16), "red"), "ICO")
    wav = (SPEECH / "capital.wav").read_bytes()
    for data, name in [(ico, "ICO"), (wav, "WAV"), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
                       (b"hello, this is text", "not a recognised image")]:
        with pytest.raises(UnsupportedMediaError, match=name) as exc:
            load_image(data)
        assert exc.value.code == "unsupported_media_type"


def test_image_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")
    with pytest.raises(TypeError):
        load_image(12345)


# --------------------------------------------------------------------------- data URIs


def test_data_uri_round_trip():
    png = _encode(Image.new("RGB", (3, 3), "blue"), "PNG")
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    mime, data = decode_data_uri(uri)
    assert (mime, data) == ("image/png", png)
    assert load_image(data).getpixel((1, 1)) == (0, 0, 255)
    assert decode_data_uri(uri, max_bytes=len(png)) == ("image/png", png)

    webm = (SPEECH / "capital.webm").read_bytes()
    mime, data = decode_data_uri("DATA:Audio/WebM;codecs=opus;base64," + base64.b64encode(webm).decode())
    assert (mime, data) == ("audio/webm", webm)


def test_data_uri_variants():
    raw = bytes(range(256))
    b64 = base64.b64encode(raw).decode()
    # Line-wrapped, URL-safe alphabet without padding, percent-encoded text.
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    assert decode_data_uri("data:application/octet-stream;base64," + wrapped)[1] == raw
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_data_uri("data:application/octet-stream;base64," + urlsafe)[1] == raw
    assert decode_data_uri("data:,hello%20world") == ("text/plain", b"hello world")


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/cat.png",
        "image/png;base64,AAAA",
        "data:image/png;base64",  # no comma
        "data:image/png;base64,@@@@",
        "data:image/png;base64,AAAAA",  # impossible base64 length
        "data:image/png;base64,AA=A",
        "data:image/png;base64,AAAé",
        "data:not a type;base64,AAAA",
    ],
)
def test_malformed_data_uri(uri):
    with pytest.raises(CorruptMediaError) as exc:
        decode_data_uri(uri)
    assert exc.value.code == "invalid_media"


def test_data_uri_not_a_string():
    with pytest.raises(CorruptMediaError):
        decode_data_uri(b"data:,x")  # type: ignore[arg-type]


def test_data_uri_size_checked_before_decoding(monkeypatch):
    payload = base64.b64encode(b"x" * 1000).decode()
    uri = "data:image/png;base64," + payload
    decoded = []
    real = base64.b64decode
    monkeypatch.setattr(media.base64, "b64decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with pytest.raises(MediaTooLargeError, match="1000 bytes, over the limit of 999 bytes") as exc:
        decode_data_uri(uri, max_bytes=999)
    assert exc.value.code == "media_too_large"
    assert decoded == []
    assert decode_data_uri(uri, max_bytes=1000)[1] == b"x" * 1000
    with pytest.raises(MediaTooLargeError):
        decode_data_uri("data:text/plain," + "a" * 20, max_bytes=10)
