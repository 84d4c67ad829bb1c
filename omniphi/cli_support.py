"""What `omniphi` and its sub-commands (serve, data, train, eval) share: the one-line argument
parser, argument types, the device/dtype/quantize options, and the wrapper that turns an error into
one line on stderr with exit status 2 (the user's fault) or 1 (a bug).

Light on purpose: it imports no torch or transformers, so `--help` stays instant; `omniphi/cli.py`
and the sub-commands import it, it imports neither.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

from omniphi.errors import UserError, is_user_error
from omniphi.templates import MEDIA_PLACEMENTS

EXIT_USAGE = 2
EXIT_FAILURE = 1

# One source for the choices; omniphi.runtime.loading checks the same names.
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("auto", "none", "int8", "int4")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to each option's help where there is a default to say (not None, False, []);
    descriptions and epilogs keep their line breaks (e.g. one eval task per line)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; one line is easier to read (and to grep).
    Every --help shows the defaults (subcommand parsers are of this class too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class CliError(UserError):
    """A user-facing error raised by a command itself: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    """argparse type for counts (--n, --limit, --batch-size, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def run_reporting_errors(prog: str, command: Callable[[argparse.Namespace], int | None], args) -> int:
    """Run a command; an exception becomes one line on stderr and exit status 2 (the user's fault)
    or 1 (anything else). OMNIPHI_DEBUG=1 lets the traceback through."""
    try:
        return int(command(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 — the one place that turns errors into a line
        if os.environ.get("OMNIPHI_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE if is_user_error(error) else EXIT_FAILURE


# -- the model options every answering command takes ---------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --quantize, --media-placement (ask, chat, serve, eval)."""
    parser.add_argument("--model", default="starter", help="preset (starter, phi2, tiny) or model directory")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="weights and activations; auto: the model's preference, else bfloat16 on CUDA and "
                             "on a CPU where it measures faster than float32, else float32")
    parser.add_argument("--quantize", default="auto", choices=QUANTIZATIONS,
                        help="weight-only quantisation of the LLM's layers (towers stay as they are); "
                             "auto: the model's preference, else none")
    parser.add_argument("--media-placement", default="auto", choices=("auto",) + MEDIA_PLACEMENTS,
                        help="where a message's pictures go in the prompt: as_given (the order sent) or "
                             "images_first; auto: the model's own (the starter's: images_first)")


def load_assistant(args: argparse.Namespace):
    """The Assistant for --model/--device/--dtype/--quantize/--media-placement (timing on stderr with OMNIPHI_TIMING=1)."""
    from omniphi.weights.hub import start_probe_for

    start_probe_for(args.model)  # a preset from the hub: ask it while the libraries below import

    from transformers.utils import logging as hf_logging

    from omniphi.runtime.assistant import Assistant

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    assistant = Assistant.load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                               media_placement=args.media_placement)
    if os.environ.get("OMNIPHI_TIMING"):
        print(f"[loaded {assistant.name} in {time.perf_counter() - started:.1f} s]", file=sys.stderr)
    return assistant
