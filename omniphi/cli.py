"""`omniphi` command line: ask, chat, transcribe, serve, data, train, merge, eval, export/import.

Bad files and arguments end with one line on stderr and exit status 2, never a traceback
(set OMNIPHI_DEBUG=1 to see one). Heavy imports happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; one line is easier to read (and to grep)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type for counts (--n, --limit, --batch-size, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _settings(args, defaults):
    """The user's flags over the model's own generation defaults (its generation_config.json)."""
    from dataclasses import replace

    chosen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    return replace(defaults, **{k: v for k, v in chosen.items() if v is not None},
                   stop=args.stop or [], seed=args.seed).validate()


def _load_media(kind: str, path: str):
    from omniphi import media

    if not Path(path).is_file():
        raise CliError(f"{kind} file not found: {path}")
    try:
        return media.load_image(path) if kind == "image" else media.load_audio(path)
    except media.MediaError as error:
        raise CliError(f"{path}: {error}") from None


def _load_assistant(spec: str):
    from transformers.utils import logging as hf_logging

    from omniphi.runtime.assistant import Assistant

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    assistant = Assistant.load(spec)
    if os.environ.get("OMNIPHI_TIMING"):
        print(f"[loaded {assistant.name} in {time.perf_counter() - started:.1f} s]", file=sys.stderr)
    return assistant


def _answer(assistant, messages, args) -> str:
    """Stream one answer to stdout (transcripts first, marked); return the answer text."""
    from omniphi.chat import Done, Token, Transcript

    pieces = []
    done = None
    for event in assistant.stream(messages, _settings(args, assistant.generation_defaults), audio_mode=args.audio_mode):
        if isinstance(event, Transcript):
            print(f"[transcript of audio {event.index + 1}] {event.text}", flush=True)
        elif isinstance(event, Token):
            pieces.append(event.text)
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Done):
            done = event
    print(flush=True)
    if args.stats and done is not None:
        rate = done.completion_tokens / done.seconds if done.seconds else 0.0
        print(
            f"[{done.prompt_tokens} prompt tokens, {done.completion_tokens} answer tokens in {done.seconds:.2f} s: "
            f"{rate:.1f} tokens/s, finish: {done.finish_reason}]",
            file=sys.stderr,
        )
    return "".join(pieces).strip()


def cmd_ask(args) -> int:
    parts = [{"type": "image", "image": _load_media("image", p)} for p in args.image]
    parts += [{"type": "audio", "audio": _load_media("audio", p)} for p in args.audio]
    if args.text:
        parts.append({"type": "text", "text": args.text})
    if not parts:
        raise CliError("nothing to ask: give a question, --image or --audio")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": parts})
    _answer(_load_assistant(args.model), messages, args)
    return 0


CHAT_HELP = "commands: /image PATH, /audio PATH (attach to your next message), /reset, /exit"


def cmd_chat(args) -> int:
    assistant = _load_assistant(args.model)
    history = [{"role": "system", "content": args.system}] if args.system else []
    pending: list[dict] = []
    print(f"omniphi chat with {assistant.name}. {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            try:
                if command == "/exit":
                    return 0
                if command == "/reset":
                    history, pending = history[:1] if args.system else [], []
                    print("[conversation cleared]", file=sys.stderr)
                elif command in ("/image", "/audio") and argument:
                    kind = command[1:]
                    pending.append({"type": kind, kind: _load_media(kind, argument.strip())})
                    print(f"[{kind} attached: {argument.strip()}]", file=sys.stderr)
                else:
                    print(f"unknown command {line!r}; {CHAT_HELP}", file=sys.stderr)
            except CliError as error:  # a bad file in the REPL is reported, the chat goes on
                print(f"omniphi: error: {error}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": pending + [{"type": "text", "text": line}]})
        pending = []
        print("assistant> ", end="", flush=True)
        try:
            answer = _answer(assistant, history, args)
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def cmd_transcribe(args) -> int:
    from transformers.utils import logging as hf_logging

    from omniphi.presets import load_transcriber

    hf_logging.disable_progress_bar()
    audio = _load_media("audio", args.file)
    print(load_transcriber(args.model).transcribe(audio))
    return 0


def cmd_export_llava(args) -> int:
    from omniphi.interop import export_llava_hf
    from omniphi.presets import load

    export_llava_hf(load(args.model), args.out)
    print(f"wrote a transformers LlavaForConditionalGeneration checkpoint to {args.out}")
    return 0


def cmd_import_llava(args) -> int:
    from omniphi.interop import import_llava_hf
    from omniphi.presets import save_directory

    save_directory(import_llava_hf(args.source), args.out)
    print(f"wrote an omniphi model directory to {args.out}")
    return 0


def _add_generation_arguments(parser):
    parser.add_argument("--model", default="starter", help="preset (starter, phi2, tiny) or model directory")
    parser.add_argument("--audio-mode", choices=["native", "transcribe"], default="native",
                        help="native: audio embeddings go to the LLM; transcribe: Whisper's transcript does")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's (its generation_config.json)")
    parser.add_argument("--temperature", type=float, help="0 = greedy; default: the model's (the starter's is 0)")
    parser.add_argument("--top-p", type=float, help="default: the model's")
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--stats", action="store_true", help="print token counts and speed to stderr")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """`command` is the subcommand about to run: only its plugged module is imported."""
    parser = OneLineParser(prog="omniphi", description="Multimodal assistant: text, images and audio in, text out.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    ask = sub.add_parser("ask", help="ask one question (streams the answer)")
    ask.add_argument("text", nargs="?", default="", help="the question")
    ask.add_argument("--image", action="append", default=[], metavar="FILE")
    ask.add_argument("--audio", action="append", default=[], metavar="FILE")
    _add_generation_arguments(ask)
    ask.set_defaults(run=cmd_ask)

    chat = sub.add_parser("chat", help="multi-turn chat in the terminal")
    _add_generation_arguments(chat)
    chat.set_defaults(run=cmd_chat)

    transcribe = sub.add_parser("transcribe", help="print Whisper's transcript of an audio file")
    transcribe.add_argument("file")
    transcribe.add_argument("--model", default="starter")
    transcribe.set_defaults(run=cmd_transcribe)

    export = sub.add_parser("export-llava", help="export the image–text part for transformers' LlavaForConditionalGeneration")
    export.add_argument("out")
    export.add_argument("--model", default="starter")
    export.set_defaults(run=cmd_export_llava)

    imp = sub.add_parser("import-llava", help="import a llava-hf checkpoint directory as an omniphi model")
    imp.add_argument("source")
    imp.add_argument("out")
    imp.set_defaults(run=cmd_import_llava)

    for name, module, adder, runner in _PLUGGED_COMMANDS:
        _plug(sub, name, module, adder, runner, load=name == command)
    return parser


# Commands whose arguments live beside their implementation: (name, module, add-arguments, run).
_PLUGGED_COMMANDS = [
    ("serve", "omniphi.serve.server", "add_serve_arguments", "run_serve"),
    ("data", "omniphi.data.cli", "add_data_arguments", "run_data"),
    ("train", "omniphi.train.cli", "add_train_arguments", "run_train"),
    ("merge", "omniphi.train.cli", "add_merge_arguments", "run_merge"),
    ("eval", "omniphi.eval.cli", "add_eval_arguments", "run_eval"),
]


_PLUGGED_HELP = {
    "serve": "run the web page and OpenAI-compatible API",
    "data": "build and convert training data",
    "train": "train with a YAML recipe",
    "merge": "merge a LoRA training output into a full model",
    "eval": "evaluate on a benchmark",
}


def _plug(sub, name, module_name, adder, runner, load: bool):
    import importlib.util

    if importlib.util.find_spec(module_name) is None:
        return
    parser = sub.add_parser(name, help=_PLUGGED_HELP[name])
    if load:  # importing e.g. FastAPI for `omniphi ask` would only slow it down
        module = importlib.import_module(module_name)
        getattr(module, adder)(parser)
        parser.set_defaults(run=getattr(module, runner))


def main(argv: list[str] | None = None) -> int:
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # a CLI user wants answers, not library chatter
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 — the CLI's one place that turns errors into a line
        if os.environ.get("OMNIPHI_DEBUG"):
            raise
        print(f"omniphi: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE if _is_user_error(error) else 1


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _is_user_error(error: BaseException) -> bool:
    from omniphi.media import MediaError

    return isinstance(error, (CliError, MediaError, FileNotFoundError, ValueError, PermissionError)) or type(
        error
    ).__name__ in ("MissingWeightsError", "TranscriptionUnavailableError")


if __name__ == "__main__":
    sys.exit(main())
