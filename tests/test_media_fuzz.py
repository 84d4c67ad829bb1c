"""The media decoders survive hostile files: run tests/media_fuzz.py in a subprocess (a crash of a
native decoder, e.g. PyAV's segfault on 8+ audio channels, fails this test instead of pytest)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hostile_audio_and_images_decode_or_raise_media_errors_without_crashing():
    # MALLOC_PERTURB_ fills freed and new memory with garbage: use-after-free and uninitialised
    # reads in native code then crash reliably instead of by luck.
    env = {**os.environ, "MALLOC_PERTURB_": "165", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "media_fuzz.py")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    outcomes = {line["case"]: line["outcome"] for line in lines if "outcome" in line}
    started = [line["case"] for line in lines if "outcome" not in line]
    unfinished = [case for case in started if case not in outcomes]
    assert run.returncode == 0 and not unfinished, (
        f"exit status {run.returncode}; crashed while decoding {unfinished}; "
        f"bugs: {[c for c, o in outcomes.items() if o.startswith('BUG')]}\n{run.stderr[-2000:]}")
    # The fuzzer really ran: every container and the channel counts are there, intact files decode.
    assert len(outcomes) > 400
    for case in ("audio wav s16 9ch", "audio wav s16 16ch", "audio wav s16 24ch", "audio flac 8ch",
                 "audio m4a aac 6ch", "audio ogg opus 6ch", "audio webm opus 8ch", "audio mp3 stereo",
                 "audio ogg vorbis stereo", "audio aiff 9ch", "image PNG RGBA", "image TIFF F"):
        assert outcomes[case] == "ok", (case, outcomes[case])
    # More channels than MediaLimits.max_audio_channels are refused, not decoded.
    for case in ("audio wav s16 25ch", "audio wav s16 64ch", "audio wav flt 33ch"):
        assert outcomes[case] == "UnsupportedMediaError", (case, outcomes[case])
