"""Whisper's decoding, as omniphi.asr runs it (beam search with its loop test and token budget), against
greedy, and with and without the starter's prompt (the words of its world): corpus WER and time in one run.

    .venv/bin/python bench/whisper_decoding.py --data data/starter-shapes --split test --every 3
    .venv/bin/python bench/whisper_decoding.py --speech data/starter-replay/speech_asr.jsonl --every 4

--data is what `make starter` writes (data/starter-shapes) or any `omniphi data shapes` output with
spoken questions ({split}_spoken.json); --speech a JSON-lines file of {"audio": path, "text": reference}
(paths relative to the file), such as the general sentences and questions the starter build speaks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omniphi import asr
from omniphi.eval.metrics import corpus_wer
from omniphi.media import load_audio
from omniphi.model_card import read_transcription_prompt
from omniphi.weights import STARTER_WEIGHTS_DIR


def clips_and_references(args) -> tuple[list, list[str]]:
    if args.speech is not None:
        records = [json.loads(line) for line in args.speech.read_text().splitlines() if line.strip()]
        records = records[::args.every]
        return [load_audio(args.speech.parent / r["audio"]) for r in records], [r["text"] for r in records]
    records = json.loads((args.data / f"{args.split}_spoken.json").read_text())[::args.every]
    return [load_audio(args.data / r["audio"]) for r in records], [r["spoken_text"] for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/starter-shapes"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--speech", type=Path, default=None, help="JSON lines of {audio, text} instead of --data")
    parser.add_argument("--every", type=int, default=3, help="every n-th clip (1: all)")
    args = parser.parse_args()
    clips, references = clips_and_references(args)
    starter_prompt = read_transcription_prompt(STARTER_WEIGHTS_DIR)
    transcriber = asr.Transcriber.starter()
    rows = [("greedy", 1, ""), (f"beam search ({asr.BEAMS} beams)", asr.BEAMS, ""),
            ("beam search + starter's prompt", asr.BEAMS, starter_prompt)]
    for name, beams, prompt in rows:
        transcriber.beams = beams
        start = time.perf_counter()
        transcripts = [transcriber.transcribe(clip, prompt=prompt) for clip in clips]
        seconds = time.perf_counter() - start
        print(f"{name:32s} WER {100 * corpus_wer(zip(references, transcripts)):5.1f} %  "
              f"{seconds:6.1f} s for {len(clips)} clips", flush=True)


if __name__ == "__main__":
    main()
