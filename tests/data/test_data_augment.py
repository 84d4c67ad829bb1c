"""Hard versions of the synthetic spoken questions (omniphi/data/augment.py)."""

import json
import random

import numpy as np
import pytest

from omniphi.data import augment as A

RATE = 16_000


def tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2))


def test_speed_changes_the_length_by_its_factor():
    assert len(A.change_speed(tone(440), 1.25)) == pytest.approx(RATE / 1.25, abs=1)
    assert len(A.change_speed(tone(440), 0.8)) == pytest.approx(RATE / 0.8, abs=1)


@pytest.mark.parametrize("colour", ["white", "brown"])
def test_noise_is_added_at_the_requested_signal_to_noise_ratio(colour):
    clean = tone(440)
    noisy = A.add_noise(clean, 10.0, np.random.default_rng(0), colour)
    assert 10 * np.log10(power(clean) / power(noisy - clean)) == pytest.approx(10.0, abs=0.1)


def test_telephone_band_keeps_speech_frequencies_and_drops_the_rest():
    assert power(A.band_limit(tone(1000))) > 0.8 * power(tone(1000))
    assert power(A.band_limit(tone(80))) < 0.05 * power(tone(80))
    assert power(A.band_limit(tone(6000))) < 0.05 * power(tone(6000))


def test_room_leaves_an_echo_after_the_sound_stops():
    clip = np.concatenate([tone(440, 0.3), np.zeros(RATE // 2, np.float32)])
    wet = A.add_room(clip, 0.6, np.random.default_rng(0))
    assert len(wet) == len(clip)
    tail = slice(int(0.35 * RATE), int(0.5 * RATE))
    assert power(clip[tail]) == 0 and power(wet[tail]) > 1e-4


@pytest.mark.parametrize("codec", A.CODECS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_codec_round_trip_keeps_the_sound(codec):
    out = A.codec_round_trip(tone(440), *codec)
    assert abs(len(out) - RATE) < 0.1 * RATE  # encoder delay and padding only
    assert 0.5 < power(out) / power(tone(440)) < 1.5


def test_augment_applies_at_least_one_effect_and_is_seeded():
    clip = tone(300)
    for seed in range(12):
        audio, effects = A.augment(clip, random.Random(seed))
        assert effects and np.abs(audio).max() <= 1.0
        again, same = A.augment(clip, random.Random(seed))
        assert same == effects and np.array_equal(again, audio)


def test_augment_spoken_replaces_a_seeded_share_and_can_be_redone(tmp_path):
    from omniphi.data.tts import _write_wav

    records = []
    (tmp_path / "spoken").mkdir()
    for i in range(40):
        _write_wav(tmp_path / "spoken" / f"{i}.wav", tone(200 + 10 * i, 0.5))
        records.append({"id": f"q{i}", "question": f"question {i}?", "audio": f"spoken/{i}.wav"})
    (tmp_path / "train_spoken.json").write_text(json.dumps(records))
    replaced = A.augment_spoken(tmp_path, "train", 0.5, seed=1)
    assert 10 < replaced < 30
    spoken = json.loads((tmp_path / "train_spoken.json").read_text())
    hard = [r for r in spoken if r["audio"].startswith("spoken-hard/")]
    assert len(hard) == replaced and all(r["augmented"] for r in hard)
    manifest = [json.loads(line) for line in (tmp_path / "train_asr.jsonl").read_text().splitlines()]
    assert [m["audio"] for m in manifest] == [r["audio"] for r in spoken]
    first = {r["id"]: (tmp_path / r["audio"]).read_bytes() for r in hard}
    assert A.augment_spoken(tmp_path, "train", 0.5, seed=1) == replaced  # from the clean records again
    assert {r["id"]: (tmp_path / r["audio"]).read_bytes() for r in json.loads(
        (tmp_path / "train_spoken.json").read_text()) if "augmented" in r} == first
