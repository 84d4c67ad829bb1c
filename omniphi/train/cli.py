"""`omniphi train RECIPE.yaml [--resume [CHECKPOINT]] [--key value ...]` and `omniphi merge DIR OUT`.

`python -m omniphi.train ...` and `torchrun --nproc_per_node N -m omniphi.train ...` take the same
arguments. Overrides address recipe fields: `--learning_rate 1e-4`, `--training.max_steps 100`,
`--lora.r 16`, `--lora null`, `--data.train.0.path other.json`.
"""

from __future__ import annotations

import argparse
import sys

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from omniphi.train.recipe import STAGES

    parser.description = f"Train with a YAML recipe (stages: {', '.join(STAGES)})."
    parser.epilog = (
        "options after the recipe: --resume [CHECKPOINT] continues the last (or the given) checkpoint of the run; "
        "--print-recipe shows the recipe with overrides applied and exits; any other --key value overrides a "
        "recipe field (--learning_rate 1e-4, --training.max_steps 100, --lora.r 16, --lora null)"
    )
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--resume [CHECKPOINT], --print-recipe, --key value ...")
    return parser


def split_options(tokens: list[str]) -> tuple[bool | str | None, bool, list[str]]:
    """Pull --resume [PATH] and --print-recipe out of the override tokens."""
    resume: bool | str | None = None
    print_recipe = False
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--resume":
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                resume, i = tokens[i + 1], i + 2
            else:
                resume, i = True, i + 1
        elif token.startswith("--resume="):
            resume, i = token.split("=", 1)[1], i + 1
        elif token == "--print-recipe":
            print_recipe, i = True, i + 1
        else:
            rest.append(token)
            i += 1
    return resume, print_recipe, rest


def run_train(args) -> int:
    from omniphi.train.recipe import load_recipe, parse_overrides

    resume, print_recipe, rest = split_options(list(args.overrides or []))
    recipe = load_recipe(args.recipe, parse_overrides(rest))
    if print_recipe:
        print(recipe.dump(), end="")
        return 0
    from omniphi.train.run import run_training

    try:
        result = run_training(recipe, resume=resume)
    finally:
        leave_process_group()
    # The audio_words stage runs its own loop in one process (no Trainer, no plots).
    if result.trainer is None or result.trainer.args.process_index == 0:
        if result.complete:
            plots = result.output_dir / "plots"
            print(f"trained {result.global_step} steps; model in {result.output_dir} "
                  f"(omniphi ask --model {result.output_dir}" + (f"; plots in {plots})" if plots.is_dir() else ")"))
        else:
            print(f"stopped at step {result.global_step}/{result.max_steps}; continue with --resume")
    return 0


def leave_process_group() -> None:
    """Under torchrun, destroy the process group before the interpreter exits. Left to
    interpreter teardown, gloo's worker threads can abort the process ('terminate called without
    an active exception', SIGABRT) after training has finished, and torchrun then reports the
    whole run as failed. Without a process group (one process) this does nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def add_merge_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = "Merge a training output (LoRA adapter + trained projectors on its base) into a full model."
    parser.add_argument("directory", help="training output (or one of its checkpoint-N)")
    parser.add_argument("out", help="new model directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    return parser


def run_merge(args) -> int:
    import torch

    from omniphi.train.merge import merge_output

    out = merge_output(args.directory, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote a merged model to {out} (omniphi ask --model {out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m omniphi.train` (torchrun runs one per process)."""
    import logging
    import os

    from omniphi.cli_support import OneLineParser, run_reporting_errors

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = add_train_arguments(OneLineParser(prog="python -m omniphi.train"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    code = run_reporting_errors("omniphi train", run_train, args)
    from omniphi.train.run import world_size

    if world_size() > 1:
        exit_without_teardown(code)
    return code


def exit_without_teardown(code: int) -> None:
    """End a torchrun rank now, skipping interpreter teardown. Destroying the process group
    (`leave_process_group`) is not enough: DDP's reducer and the Trainer still hold the gloo group,
    whose threads are then destroyed in C++ static teardown, and a rank can still abort there
    ('terminate called without an active exception', SIGABRT) after a finished run, which torchrun
    reports as a failed job. Every output is written and closed by now; only buffers need flushing."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
