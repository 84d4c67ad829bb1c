"""``omniphi data ...``: dataset preparation commands.

    omniphi data shapes   --out DIR --n N [--seed S] [--image-size 224] [--speak/--no-speak] ...
    omniphi data generate --endpoint URL --model NAME --prompts prompts.txt --out corpus.jsonl ...
    omniphi data spoken   INPUT.json --out OUTPUT.json [--audio-dir DIR] ...

`omniphi/cli.py` creates the ``data`` parser, fills it with ``add_data_arguments(parser)`` and
dispatches to ``run_data(args)``.
Usage errors and unusable inputs print one line on stderr and exit 2; a failing TTS program
or endpoint exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from omniphi.cli_support import positive_int
from omniphi.errors import UserError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(UserError, ValueError):
    pass


def _rates(text: str) -> list[int]:
    """"130-200" (every 10) or "140,160,180"."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            if lo > hi:
                raise ValueError
            values = list(range(lo, hi + 1, 10)) or [lo]
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH or a comma-separated list of words per minute, got {text!r}") from None
    if not values or any(not 40 <= v <= 600 for v in values):
        raise argparse.ArgumentTypeError(f"rates must lie in 40..600 words per minute, got {text!r}")
    return values


def _add_tts_options(p: argparse.ArgumentParser) -> None:
    from omniphi.data.tts import ALL_ENGINES, DEFAULT_TTS, ENGINES

    p.add_argument("--tts", choices=[ALL_ENGINES, *sorted(ENGINES)], default=DEFAULT_TTS,
                   help=f"TTS engine; sets the command and voices unless --tts-command/--voices are given "
                        f"(default {DEFAULT_TTS}: every engine, half the questions each, as the starter trains on)")
    # Comma-separated rather than nargs="+", which would swallow a following positional path.
    p.add_argument("--voices", default=None, metavar="V1,V2,...",
                   help="voices to draw from (default: all of the engine's English voices)")
    p.add_argument("--rates", type=_rates, default=None, metavar="LOW-HIGH|R1,R2",
                   help="speaking rates in words per minute (default 130-200, every 10)")
    p.add_argument("--tts-command", default=None,
                   help="command template with {text} and {out} (and {voice}, {rate} in words per minute, "
                        "{stretch} = 175/rate); run without a shell")
    p.add_argument("--tts-cache", default=None, metavar="DIR", help="TTS cache (default $OMNIPHI_CACHE/tts)")
    p.add_argument("--jobs", type=positive_int, default=min(4, os.cpu_count() or 1), help="parallel TTS processes")


def add_data_arguments(data: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from omniphi.cli_support import OneLineParser

    data.description = "Prepare datasets (synthetic shapes, generated text, spoken questions)."
    sub = data.add_subparsers(dest="data_command", metavar="{shapes,generate,spoken}", parser_class=OneLineParser)
    sub.required = True

    p = sub.add_parser("shapes", help="write the synthetic coloured-shapes dataset",
                       description="Write images of coloured shapes with captions, questions and spoken questions.")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; a previous shapes run is replaced)")
    p.add_argument("--n", required=True, type=positive_int, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--questions-per-image", type=int, default=3)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--speak", action=argparse.BooleanOptionalAction, default=True,
                   help="also write spoken questions (needs the TTS program; default on)")
    _add_tts_options(p)

    p = sub.add_parser("generate", help="write a text corpus with an OpenAI-compatible chat endpoint",
                       description="Ask a chat endpoint to write samples for each prompt; resumable.")
    p.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:11434/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, type=Path, help="text file, one prompt per line")
    p.add_argument("--out", required=True, type=Path, help="JSONL file to append to")
    p.add_argument("--n-per-prompt", type=positive_int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=positive_int, default=512)
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--api-key", default=None, help="bearer key (default: $OPENAI_API_KEY if set)")
    p.add_argument("--concurrency", type=positive_int, default=1)
    p.add_argument("--max-retries", type=int, default=6)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")

    p = sub.add_parser("spoken", help="convert a LLaVA JSON so that each first question is speech",
                       description="Synthesise each record's first question and write a LLaVA JSON with <audio>.")
    p.add_argument("input", type=Path, help="LLaVA JSON or JSONL")
    p.add_argument("--out", required=True, type=Path, help="output JSON")
    p.add_argument("--audio-dir", type=Path, default=None, help="where WAVs go (default: OUT's folder/spoken)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voice/rate choice")
    _add_tts_options(p)
    return data


# --------------------------------------------------------------------------- commands


def _speaker(args):
    from omniphi.data.tts import make_speaker, program_not_found, speaker_programs

    voices = [v.strip() for v in args.voices.split(",") if v.strip()] if args.voices else None
    try:
        speaker = make_speaker(args.tts, voices, args.rates, seed=args.seed, cache_dir=args.tts_cache,
                               command=args.tts_command)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for program in speaker_programs(speaker):
        if shutil.which(program) is None:
            raise UsageError(program_not_found(program, "pass another --tts or --tts-command, or use --no-speak"))
    return speaker


def _run_shapes(args) -> int:
    from omniphi.data.shapes import generate_shapes

    speaker = _speaker(args) if args.speak else None
    start = time.perf_counter()
    try:
        meta = generate_shapes(args.out, n=args.n, seed=args.seed, image_size=args.image_size,
                               questions_per_image=args.questions_per_image, val_frac=args.val_frac,
                               test_frac=args.test_frac, speaker=speaker, jobs=args.jobs)
    except (ValueError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    sizes = ", ".join(f"{s} {v['images']} images/{v['questions']} questions" for s, v in meta["splits"].items())
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {sizes}"
          + ("; spoken questions included" if speaker else ""))
    return 0


def _run_generate(args) -> int:
    from omniphi.data.generate import ChatClient, generate_corpus, read_prompts

    try:
        prompts = read_prompts(args.prompts)
        client = ChatClient(endpoint=args.endpoint, model=args.model,
                            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                            temperature=args.temperature, max_tokens=args.max_tokens, system=args.system,
                            max_retries=max(0, args.max_retries), timeout=args.timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.out.exists() and args.out.is_dir():
        raise UsageError(f"--out is a directory: {args.out}")
    try:
        stats = generate_corpus(client, prompts, args.out, n_per_prompt=args.n_per_prompt, concurrency=args.concurrency)
    finally:
        client.close()
    print(f"wrote {stats['written']} samples to {args.out} ({stats['already']} already there"
          + (f", {stats['empty']} empty answers not written: re-run to retry them" if stats["empty"] else "") + ")")
    return 0


def _run_spoken(args) -> int:
    from omniphi.data.llava import RecordStore
    from omniphi.data.tts import spoken_records

    speaker = _speaker(args)
    if args.out.resolve() == args.input.resolve():
        raise UsageError("--out must differ from the input file")
    try:
        records = list(RecordStore(args.input))
    except ValueError as exc:  # DataFileError, and RecordError for a bad JSONL line
        raise UsageError(str(exc)) from None
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or not isinstance(r.get("conversations"), list)]
    if bad:
        raise UsageError(f"{args.input}: record {bad[0]} has no 'conversations' list ({len(bad)} such records)")
    audio_dir = args.audio_dir or args.out.parent / "spoken"
    out_records, unchanged = spoken_records(records, speaker, audio_dir, relative_to=args.out.parent, jobs=args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out_records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(out_records) - unchanged} spoken questions in {audio_dir}"
          + (f", {unchanged} records without a text question left as they were" if unchanged else ""))
    return 0


def run_data(args) -> int:
    """Run the ``omniphi data`` subcommand in ``args``; returns the exit code (messages printed)."""
    from omniphi.data.generate import GenerateError
    from omniphi.data.tts import TTSError

    commands = {"shapes": _run_shapes, "generate": _run_generate, "spoken": _run_spoken}
    prog = f"omniphi data {args.data_command}"
    try:
        return commands[args.data_command](args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TTSError, GenerateError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
