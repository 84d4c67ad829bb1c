"""Start-up and first-answer times of the `omniphi` CLI, and the Whisper token-ban speed-up.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py [--runs 3]

Each command runs --runs times in a fresh process, the commands interleaved so that machine noise
falls on all of them alike; the median wall time is printed. Then, in one process, the loaded starter
answers a typed and a spoken question, and Whisper transcribes the same clip with transformers' own
token-ban processors and with omniphi.asr.SuppressTokens.
Timings on a shared machine vary up to 4x: compare the numbers of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's omniphi, also where an editable install points elsewhere
CLIP = ROOT / "tests" / "fixtures" / "speech" / "capital.wav"
COMMANDS = {
    "omniphi --help": ["--help"],
    "omniphi transcribe capital.wav (1.9 s)": ["transcribe", str(CLIP)],
    'omniphi ask "What is the capital of France?"': ["ask", "What is the capital of France?", "--max-new-tokens", "16"],
    "omniphi ask --audio capital.wav": ["ask", "--audio", str(CLIP), "--max-new-tokens", "16"],
}


def time_commands(runs: int) -> dict[str, list[float]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, args in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "omniphi.cli", *args], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    return times


def time_token_bans(runs: int) -> tuple[float, float]:
    import torch

    from omniphi.asr import SuppressTokens, Transcriber
    from omniphi.media import load_audio

    transcriber = Transcriber.starter()
    feats = transcriber.processor.feature_extractor(load_audio(CLIP), sampling_rate=16_000,
                                                    return_tensors="pt").input_features
    stock, ours = [], []
    with torch.inference_mode():
        for _ in range(runs):
            started = time.perf_counter()
            transcriber.model.generate(input_features=feats, do_sample=False, num_beams=1)
            stock.append(time.perf_counter() - started)
            started = time.perf_counter()
            bans = SuppressTokens(*transcriber._suppress, vocab_size=transcriber.model.config.vocab_size)
            transcriber.model.generate(input_features=feats, generation_config=transcriber._generation_config,
                                       logits_processor=[bans])
            ours.append(time.perf_counter() - started)
    return statistics.median(stock), statistics.median(ours)


def time_answers(runs: int) -> dict[str, float]:
    """One loaded starter: a typed question vs the same question spoken (native audio, whose transcript
    is shown too), interleaved; median seconds per answer."""
    from omniphi.chat import GenerationSettings
    from omniphi.media import load_audio
    from omniphi.runtime.assistant import Assistant

    assistant = Assistant.load("starter")
    clip = load_audio(CLIP)
    settings = GenerationSettings(max_new_tokens=16)
    times: dict[str, list[float]] = {"typed question": [], "spoken question (native, with transcript)": []}
    for run in range(runs):
        # A clip that differs in its last sample each run: the assistant's caches never answer for it.
        spoken = clip.copy()
        spoken[-1] += 1e-4 * (run + 1)
        questions = {
            "typed question": [{"role": "user", "content": "What is the capital of France?"}],
            "spoken question (native, with transcript)": [{"role": "user", "content": [
                {"type": "audio", "audio": spoken}]}],
        }
        for name, messages in questions.items():
            started = time.perf_counter()
            for _event in assistant.stream(messages, settings, audio_mode="native"):
                pass
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-process CLI timings")
    args = parser.parse_args()
    if not args.no_cli:
        for name, seconds in time_commands(args.runs).items():
            print(f"{name:48s} median {statistics.median(seconds):6.1f} s   runs: "
                  f"{', '.join(f'{s:.1f}' for s in seconds)}")
    for name, seconds in time_answers(args.runs).items():
        print(f"answer to a {name}: median {seconds:.2f} s")
    stock, ours = time_token_bans(args.runs)
    print(f"Whisper transcription of capital.wav: transformers' token bans {stock:.2f} s, "
          f"SuppressTokens {ours:.2f} s ({stock / ours:.1f}x)")


if __name__ == "__main__":
    main()
