import json
import shlex
import sys

import numpy as np
import pytest

from omniphi.data.llava import LlavaDataset
from omniphi.data.tts import ENGLISH_VOICES, FLITE_COMMAND, FLITE_VOICES, Speaker, TTSError, spoken_conversations, spoken_records

# Stand-in TTS program: stdlib only (starts in ~20 ms), logs its arguments, writes a 22.05 kHz
# tone whose length is proportional to the text, so resampling to 16 kHz can be checked.
FAKE_TTS = r'''
import json, math, struct, sys, wave
out, voice, rate, text = sys.argv[1:5]
with open(sys.argv[5], "a") as log:
    log.write(json.dumps(sys.argv[1:5]) + "\n")
n = int(22050 * 0.05 * len(text))
with wave.open(out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)
    w.writeframes(b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * 220 * i / 22050))) for i in range(n)))
'''

# The real engines: a missing one fails these tests with the install line (tests/conftest.py).
needs_espeak = pytest.mark.usefixtures("espeak_ng")
needs_flite = pytest.mark.usefixtures("flite")


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_tts.py"
    script.write_text(FAKE_TTS)
    log = tmp_path / "calls.jsonl"
    command = " ".join(shlex.quote(str(a)) for a in (sys.executable, "-S", script)) + " {out} {voice} {rate} {text} " + shlex.quote(str(log))
    speaker = Speaker(command=command, voices=["v1", "v2", "v3"], rates=[120, 150, 180], cache_dir=tmp_path / "cache")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return speaker, calls


def test_cache_hit_skips_the_command(fake):
    speaker, calls = fake
    a = speaker.speak("Hello there.", voice="v1", rate=150)
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(len(a) / 16000 - 0.05 * len("Hello there.")) < 0.01  # resampled 22.05 → 16 kHz
    b = speaker.speak("Hello there.", voice="v1", rate=150)
    assert len(calls()) == 1
    np.testing.assert_array_equal(a, b)
    speaker.speak("Hello there.", voice="v2", rate=150)  # another voice is another entry
    speaker.speak("Hello   there.", voice="v1", rate=150)  # same text after whitespace clean-up
    assert len(calls()) == 2
    assert speaker.cache_path("Hello there.", "v1", 150).exists()


def test_text_is_one_argument_never_shell(fake):
    speaker, calls = fake
    nasty = "-rf $(touch /tmp/pwned) 'quoted' \"x\"; ls"
    speaker.speak(nasty, voice="v3", rate=120)
    assert calls()[-1] == [calls()[-1][0], "v3", "120", nasty]


def test_voice_and_rate_choice_is_seeded(fake, tmp_path):
    speaker, _ = fake
    picks = {speaker.choose(f"q{i}") for i in range(40)}
    assert len({v for v, _ in picks}) == 3 and len({r for _, r in picks}) == 3
    same = Speaker(command=speaker.command, voices=speaker.voices, rates=speaker.rates, cache_dir=tmp_path)
    assert [same.choose(f"q{i}") for i in range(10)] == [speaker.choose(f"q{i}") for i in range(10)]
    other = Speaker(command=speaker.command, voices=speaker.voices, rates=speaker.rates, cache_dir=tmp_path, seed=1)
    assert [other.choose(f"q{i}") for i in range(10)] != [speaker.choose(f"q{i}") for i in range(10)]


def test_bad_commands(tmp_path):
    with pytest.raises(ValueError, match=r"\{out\}"):
        Speaker(command="say {text}", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="placeholder"):
        Speaker(command="say {text} {out} {pitch}", cache_dir=tmp_path)
    with pytest.raises(TTSError, match="not found"):
        Speaker(command="no-such-tts-program {out} {text}", cache_dir=tmp_path).speak("hi")
    with pytest.raises(TTSError, match="wrote no audio"):
        Speaker(command="true {out} {text}", cache_dir=tmp_path).speak("hi")
    with pytest.raises(TTSError, match="exit 1"):
        Speaker(command="false {out} {text}", cache_dir=tmp_path).speak("hi")


@needs_espeak
def test_espeak_voices_exist_and_speak(tmp_path):
    speaker = Speaker(cache_dir=tmp_path)
    lengths = set()
    for voice in ENGLISH_VOICES:  # every voice in the default list must really exist
        audio = speaker.speak("Is there a green triangle?", voice=voice, rate=200)
        assert 0.5 < len(audio) / 16000 < 4.0 and np.abs(audio).max() > 0.05
        lengths.add(len(audio))
    assert len(lengths) > 3  # voices differ
    slow = speaker.speak("Is there a green triangle?", voice="en-us", rate=130)
    fast = speaker.speak("Is there a green triangle?", voice="en-us", rate=200)
    assert len(slow) > 1.2 * len(fast)
    # A leading dash is text, not an option (the default template ends options with "--").
    assert len(speaker.speak("-5 degrees", voice="en-us", rate=180)) > 8000


def test_stretch_placeholder_is_the_duration_factor_of_the_rate(tmp_path):
    log = tmp_path / "args.txt"
    script = tmp_path / "tts.py"
    script.write_text("import sys, shutil\nopen(sys.argv[3], 'w').write(sys.argv[2])\n")
    # The "program" records {stretch} and fails to write audio, which is all this test needs.
    speaker = Speaker(command=f"{sys.executable} -S {script} {{out}} {{stretch}} {log} {{text}}", cache_dir=tmp_path)
    with pytest.raises(TTSError, match="wrote no audio"):
        speaker.speak("hi", voice="v", rate=140)
    assert log.read_text() == "1.250"  # 175 wpm / 140 wpm: slower speech, longer durations


@needs_flite
def test_flite_voices_exist_and_speak(tmp_path):
    speaker = Speaker(FLITE_COMMAND, FLITE_VOICES, cache_dir=tmp_path)
    lengths = set()
    for voice in FLITE_VOICES:
        audio = speaker.speak("Is there an orange triangle?", voice=voice, rate=175)
        assert 0.5 < len(audio) / 16000 < 4.0 and np.abs(audio).max() > 0.05
        lengths.add(len(audio))
    assert len(lengths) == len(FLITE_VOICES)  # voices differ
    slow = speaker.speak("Is there an orange triangle?", voice="slt", rate=130)
    fast = speaker.speak("Is there an orange triangle?", voice="slt", rate=200)
    assert len(slow) > 1.3 * len(fast)
    assert len(speaker.speak("-5 degrees", voice="rms", rate=175)) > 8000  # -t takes it as text


def test_spoken_conversations_replace_first_question(fake, fixtures):
    speaker, calls = fake
    ds = LlavaDataset(fixtures / "llava/instruct.json", fixtures / "llava/coco/train2017")
    spoken = spoken_conversations(ds, speaker)
    s = spoken[0]
    first = s["messages"][0]["content"]
    assert [p["type"] for p in first] == ["image", "audio"]
    assert first[0]["image"].getpixel((0, 0)) == (0, 255, 0)
    assert s["meta"]["spoken_text"] == "What colour is the picture?"
    assert calls()[-1][3] == "What colour is the picture?"
    assert s["messages"][1:] == ds[0]["messages"][1:]  # later turns untouched
    assert [p["type"] for p in spoken[1]["messages"][0]["content"]] == ["image", "audio"]


def test_spoken_records_round_trip(fake, fixtures, tmp_path):
    speaker, calls = fake
    records = json.loads((fixtures / "llava/mix.json").read_text())
    out_dir = tmp_path / "out"
    new, unchanged = spoken_records(records, speaker, out_dir / "spoken", relative_to=out_dir, jobs=2)
    assert unchanged == 0
    middle = next(r for r in new if r["id"] == "middle-1")
    assert middle["conversations"][0]["value"] == "<image>\n<audio>"
    assert middle["spoken_text"] == "Compare this picture with a lemon."
    assert (out_dir / middle["audio"]).exists() and middle["audio"].startswith("spoken/")
    assert records[2]["conversations"][0]["value"] == "Compare this picture <image> with a lemon."  # input untouched
    # Written JSON reads back with the LLaVA loader: image + audio parts.
    for r in new:  # make image paths absolute for the round trip
        if "image" in r:
            r["image"] = str(fixtures / "llava" / r["image"])
    (out_dir / "mix_spoken.json").write_text(json.dumps(new))
    ds = LlavaDataset(out_dir / "mix_spoken.json")
    s = ds[0]
    assert [p["type"] for p in s["messages"][0]["content"]] == ["image", "audio"]
    assert [p["type"] for p in ds[3]["messages"][1]["content"]] == ["audio"]  # after the system turn
    n_calls = len(calls())
    spoken_records(records, speaker, out_dir / "spoken", relative_to=out_dir)  # files exist: no TTS
    assert len(calls()) == n_calls


def test_cli_spoken(fake, fixtures, tmp_path, capsys):
    from omniphi.cli import main

    speaker, calls = fake
    out = tmp_path / "conv" / "instruct_spoken.json"
    base = ["data", "spoken", "--tts-command", speaker.command, "--tts-cache", str(tmp_path / "c2"), "--voices", "a, b,c"]
    assert main(base + [str(fixtures / "llava/instruct.json"), "--out", str(out), "--rates", "140-160"]) == 0
    assert "2 spoken questions" in capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [r["conversations"][0]["value"] for r in records] == ["<image>\n<audio>"] * 2
    assert all((out.parent / r["audio"]).exists() and r["voice"] in "abc" and r["rate"] in (140, 150, 160) for r in records)
    assert len(records[0]["conversations"]) == 6

    assert main(base + [str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("omniphi data spoken: error: data file not found")
    with pytest.raises(SystemExit) as exc:
        main(base + [str(fixtures / "llava/instruct.json"), "--out", str(out), "--rates", "fast"])
    assert exc.value.code == 2


def test_a_missing_engine_names_its_debian_package():
    from omniphi.data.tts import program_not_found

    assert "`sudo apt-get install flite` or `make system-deps`" in program_not_found("flite", "x")
    assert "apt-get" not in program_not_found("my-tts", "x") and "install it" in program_not_found("my-tts", "x")


def test_voice_mix_gives_each_engine_about_half_the_utterances(tmp_path):
    from collections import Counter

    from omniphi.data.tts import ENGINES, VoiceMix

    mix = VoiceMix(cache_dir=tmp_path, seed=5)
    chosen = [mix.choose(f"q{i}") for i in range(400)]
    engines = Counter(voice.split(":")[0] for voice, _ in chosen)
    assert set(engines) == set(ENGINES) and min(engines.values()) > 150  # not 12 espeak voices to 4 flite ones
    assert {voice for voice, _ in chosen} == set(mix.voices)  # every voice of every engine is used
    assert chosen == [VoiceMix(cache_dir=tmp_path, seed=5).choose(f"q{i}") for i in range(400)]  # seeded
    assert chosen != [VoiceMix(cache_dir=tmp_path, seed=6).choose(f"q{i}") for i in range(400)]
    with pytest.raises(ValueError, match="engine:voice"):
        mix.speak("hi", voice="slt", rate=150)


@needs_espeak
@needs_flite
def test_voice_mix_speaks_with_the_chosen_engine_and_caches_like_it(tmp_path):
    from omniphi.data.tts import VoiceMix

    mix = VoiceMix(cache_dir=tmp_path)
    by_flite = mix.speak("Is there a red circle?", voice="flite:slt", rate=175)
    by_espeak = mix.speak("Is there a red circle?", voice="espeak-ng:en-gb", rate=175)
    assert np.abs(by_flite).max() > 0.05 and np.abs(by_espeak).max() > 0.05
    assert len(by_flite) != len(by_espeak)
    alone = Speaker(FLITE_COMMAND, FLITE_VOICES, cache_dir=tmp_path)
    assert mix.cache_key("Is there a red circle?", "flite:slt", 175) == alone.cache_key("Is there a red circle?", "slt", 175)
