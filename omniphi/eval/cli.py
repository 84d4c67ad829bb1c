"""``omniphi eval``: run a benchmark, print a Markdown table, save per-item results as JSON.

    omniphi eval --model PRESET|DIR --task TASK --data PATH [--limit N] [--batch-size B]
                 [--out results.json] [--audio-mode native|transcribe]
                 [--ask-by text|native|transcribe[,...]] [--images DIR] [--split S]
                 [--image-order mixed|first|last] [--system TEXT]
                 [--max-new-tokens N] [--window N --stride N] [--no-progress]

`omniphi/cli.py` creates the ``eval`` parser, fills it with ``add_eval_arguments(parser)`` and
dispatches to ``run_eval(args)``. Bad options and unusable data print one line on stderr and
exit 2; they are checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omniphi.cli_support import add_model_arguments, positive_int

EXIT_USAGE = 2


def _ask_by(text: str) -> list[str]:
    from omniphi.eval.runner import ASK_BY

    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ASK_BY]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected {', '.join(ASK_BY)} (comma-separated), got {text!r}")
    return values


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from omniphi.eval.tasks import IMAGE_ORDERS, TASKS

    names = sorted(TASKS)
    parser.description = "Evaluate a model on a benchmark; prints a Markdown table, --out saves every answer as JSON."
    aliases: dict[str, list[str]] = {}
    for alias, task in TASKS.items():
        if alias != task.name:
            aliases.setdefault(task.name, []).append(alias)
    parser.epilog = "tasks:\n" + "\n".join(
        f"  {n}{' (' + ', '.join(aliases[n]) + ')' if n in aliases else ''}: {TASKS[n].description}\n"
        f"      --data: {TASKS[n].data_help}"
        for n in names if TASKS[n].name == n
    ) + "\n\nSee docs/eval.md for layouts, prompts, metrics and the results JSON."
    add_model_arguments(parser)
    parser.add_argument("--task", required=True, choices=names, metavar="TASK", help=", ".join(names))
    parser.add_argument("--data", required=True, help="the benchmark's file or folder in its published layout")
    parser.add_argument("--limit", type=positive_int, help="only the first N questions (perplexity: windows)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts generated together, left-padded")
    parser.add_argument("--out", type=Path, help="write the results (metrics and every answer) to this JSON file")
    parser.add_argument("--audio-mode", choices=["native", "transcribe"],
                        help="asr: score only the native path or only Whisper's transcript (default: both)")
    parser.add_argument("--ask-by", type=_ask_by, action="extend",
                        help="how questions are asked: text, native (speech → LLM) or transcribe (speech → Whisper → LLM); "
                             "comma-separated or repeated for a side-by-side table (default: text)")
    parser.add_argument("--images", type=Path, help="image folder, when not where the benchmark's layout puts it")
    parser.add_argument("--split", help="scienceqa, shapes: which split (default test)")
    parser.add_argument("--image-order", choices=IMAGE_ORDERS, default="mixed",
                        help="shapes: the picture after the question in a fixed half of the questions (mixed, "
                             "reported as the image_order groups), or before (first) or after (last) it in all")
    parser.add_argument("--system", metavar="TEXT",
                        help="question tasks: a system prompt before every question (default: none, as the CLI "
                             "and the API ask; the web page's conversations start with the server's system prompt)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="answer length limit (default: per task)")
    parser.add_argument("--window", type=positive_int, help="perplexity: tokens per window (default min(context, 1024))")
    parser.add_argument("--stride", type=positive_int, help="perplexity: tokens between window starts (default window/2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _error(message: str) -> int:
    text = str(message).strip().splitlines()
    print(f"omniphi eval: error: {text[0] if text else message}", file=sys.stderr)
    return EXIT_USAGE


def run_eval(args) -> int:
    from omniphi.cli_support import load_assistant
    from omniphi.errors import UserError
    from omniphi.eval.runner import check_options, evaluate
    from omniphi.eval.tasks import EvalError, LoadOptions, check_data_path, get_task

    try:
        task = get_task(args.task)
        check_options(task, args.ask_by, args.audio_mode, args.image_order, args.system)
        if args.out is not None and args.out.is_dir():
            raise EvalError(f"--out is a directory: {args.out}")
        if args.out is not None and not args.out.parent.exists():
            raise EvalError(f"--out's folder does not exist: {args.out.parent}")
        if args.images is not None and not args.images.is_dir():
            raise EvalError(f"--images is not a folder: {args.images}")
        path = check_data_path(args.data)
        # Data first: a typo in a JSON file should not cost a model load.
        items = task.load(path, LoadOptions(images=args.images, split=args.split, limit=args.limit,
                                            image_order=args.image_order))

        assistant = load_assistant(args)
        results = evaluate(
            assistant, task, path, limit=args.limit, batch_size=args.batch_size, ask_by=args.ask_by,
            audio_mode=args.audio_mode, max_new_tokens=args.max_new_tokens, images=args.images, split=args.split,
            window=args.window, stride=args.stride, image_order=args.image_order, system=args.system,
            progress=not args.no_progress,
            items=items,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except UserError as exc:  # bad data, options, device or a model that is not installed
        return _error(str(exc))

    print(results["markdown"])
    for note in results["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if results["skipped"]:
        reasons: dict[str, int] = {}
        for s in results["skipped"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        summary = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        print(f"skipped {len(results['skipped'])} of {results['n_items']} items ({summary}); "
              f"first: {results['skipped'][0]['id']}: {results['skipped'][0]['detail']}", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results written to {args.out}", file=sys.stderr)
    return 0
