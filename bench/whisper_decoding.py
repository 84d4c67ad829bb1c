"""Whisper's decoding, beam search (what omniphi.asr runs, with its loop test and token budget) against
greedy: corpus WER and time over the spoken questions of an `omniphi data shapes` split, in one run.

    .venv/bin/python bench/whisper_decoding.py --data data/starter-shapes --split test --every 3

The data is what `make starter` writes (data/starter-shapes) or any `omniphi data shapes` output with
spoken questions ({split}_spoken.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omniphi import asr
from omniphi.eval.metrics import corpus_wer
from omniphi.media import load_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/starter-shapes"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--every", type=int, default=3, help="every n-th spoken question (1: all)")
    args = parser.parse_args()

    records = json.loads((args.data / f"{args.split}_spoken.json").read_text())[::args.every]
    clips = [load_audio(args.data / r["audio"]) for r in records]
    references = [r["spoken_text"] for r in records]
    transcriber = asr.Transcriber.starter()
    for name, beams in (("greedy", 1), (f"beam search ({asr.BEAMS} beams)", asr.BEAMS)):
        transcriber.beams = beams
        start = time.perf_counter()
        transcripts = [transcriber.transcribe(clip) for clip in clips]
        seconds = time.perf_counter() - start
        print(f"{name:24s} WER {100 * corpus_wer(zip(references, transcripts)):5.1f} %  "
              f"{seconds:6.1f} s for {len(clips)} clips", flush=True)


if __name__ == "__main__":
    main()
