"""`omniphi` command line: ask, chat, transcribe, serve, data, train, merge, eval, bench, export/import.

Bad files and arguments end with one line on stderr and exit status 2, never a traceback
(set OMNIPHI_DEBUG=1 to see one). Heavy imports happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omniphi.cli_support import CliError, OneLineParser, add_model_arguments, load_assistant, run_reporting_errors


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
    _answer(load_assistant(args), messages, args)
    return 0


CHAT_HELP = ("commands: /image FILE (attach to your next message), /audio FILE (send the clip as your question, "
             "with any attached image), /reset, /exit")


def cmd_chat(args) -> int:
    assistant = load_assistant(args)
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
                    continue
                if command in ("/image", "/audio") and argument.strip():
                    kind = command[1:]
                    pending.append({"type": kind, kind: _load_media(kind, argument.strip())})
                    print(f"[{kind} attached: {argument.strip()}]", file=sys.stderr)
                    if kind == "image":
                        continue  # the typed message that follows carries it
                else:
                    print(f"unknown command {line!r}; {CHAT_HELP}", file=sys.stderr)
                    continue
            except CliError as error:  # a bad file in the REPL is reported, the chat goes on
                print(f"omniphi: error: {error}", file=sys.stderr)
                continue
            content = pending  # /audio: the clip is the question
        else:
            content = pending + [{"type": "text", "text": line}]
        history.append({"role": "user", "content": content})
        pending = []
        print("assistant> ", end="", flush=True)
        try:
            answer = _answer(assistant, history, args)
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


# Presets whose speech recogniser is the packaged Whisper tiny.en (as omniphi.presets.load_preset_transcriber
# says): `omniphi transcribe` loads it without importing the presets module and its LLM side (~2x the imports).
_PACKAGED_WHISPER_PRESETS = ("starter", "starter-base")


def cmd_transcribe(args) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    audio = _load_media("audio", args.file)
    if args.model in _PACKAGED_WHISPER_PRESETS:
        from omniphi.asr import Transcriber
        from omniphi.model_card import read_transcription_prompt
        from omniphi.weights import STARTER_WEIGHTS_DIR

        transcriber = Transcriber.starter()
        if args.model == "starter":  # the trained starter's prompt (the words of its world)
            transcriber.prompt = read_transcription_prompt(STARTER_WEIGHTS_DIR)
    else:
        from omniphi.runtime.loading import load_transcriber

        transcriber = load_transcriber(args.model)
    print(transcriber.transcribe(audio, prompt=args.prompt))
    return 0


def cmd_export_llava(args) -> int:
    from omniphi.interop import export_llava_hf
    from omniphi.runtime.loading import load_weights

    export_llava_hf(load_weights(args.model), args.out)
    print(f"wrote a transformers LlavaForConditionalGeneration checkpoint to {args.out}")
    return 0


def cmd_import_llava(args) -> int:
    from omniphi.interop import import_llava_hf
    from omniphi.runtime.loading import save_directory

    save_directory(import_llava_hf(args.source), args.out)
    print(f"wrote an omniphi model directory to {args.out}")
    return 0


def _add_generation_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--audio-mode", choices=["native", "transcribe"], default="native",
                        help="native: audio embeddings go to the LLM; transcribe: Whisper's transcript does")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer, in tokens; default: the model's (its generation_config.json)")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0 = greedy; default: the model's (the starter's is 0)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: keep the likeliest tokens up to this mass; default: the model's")
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, help="random seed for sampling (none: a different answer each run)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--stats", action="store_true", help="print token counts and speed to stderr")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """`command` is the subcommand about to run: only its plugged module is imported."""
    parser = OneLineParser(prog="omniphi", description="Multimodal assistant: text, images and audio in, text out.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    ask = sub.add_parser("ask", help="ask one question (streams the answer)")
    ask.add_argument("text", nargs="?", default="", help="the question")
    ask.add_argument("--image", action="append", default=[], metavar="FILE",
                     help="a picture to ask about (PNG, JPEG, WebP...; repeatable)")
    ask.add_argument("--audio", action="append", default=[], metavar="FILE",
                     help="a clip to ask about, or the spoken question itself (WAV, MP3, WebM...; repeatable)")
    _add_generation_arguments(ask)
    ask.set_defaults(run=cmd_ask)

    chat = sub.add_parser("chat", help="multi-turn chat in the terminal", epilog=CHAT_HELP)
    _add_generation_arguments(chat)
    chat.set_defaults(run=cmd_chat)

    transcribe = sub.add_parser("transcribe", help="print Whisper's transcript of an audio file")
    transcribe.add_argument("file", help="audio file (WAV, MP3, WebM...)")
    transcribe.add_argument("--model", default="starter", help="preset or model directory whose Whisper transcribes")
    transcribe.add_argument("--prompt", default=None,
                            help="Whisper's prompt: words to spell as written here (default: the model's own; "
                                 "'' for none)")
    transcribe.set_defaults(run=cmd_transcribe)

    export = sub.add_parser("export-llava", help="export the image–text part for transformers' LlavaForConditionalGeneration")
    export.add_argument("out", help="directory to write")
    export.add_argument("--model", default="starter", help="preset or model directory to export")
    export.set_defaults(run=cmd_export_llava)

    imp = sub.add_parser("import-llava", help="import a llava-hf checkpoint directory as an omniphi model")
    imp.add_argument("source", help="llava-hf checkpoint directory")
    imp.add_argument("out", help="directory to write")
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
    ("bench", "omniphi.bench", "add_bench_arguments", "run_bench"),
]


_PLUGGED_HELP = {
    "serve": "run the web page and OpenAI-compatible API",
    "data": "build and convert training data",
    "train": "train with a YAML recipe",
    "merge": "merge a LoRA training output into a full model",
    "eval": "evaluate on a benchmark",
    "bench": "measure decode speed, time to first token, reuse and batching against plain transformers",
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
    return run_reporting_errors("omniphi", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
