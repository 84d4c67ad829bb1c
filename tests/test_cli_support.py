"""What the CLI and its sub-commands share: the user-error decision and the model options."""

import os
import subprocess
import sys

import pytest

from omniphi import cli
from omniphi.cli_support import CliError, run_reporting_errors
from omniphi.errors import UserError, is_user_error
from tests.conftest import ROOT


def user_errors():
    from omniphi.data.llava import DataFileError
    from omniphi.errors import DeviceError
    from omniphi.eval.tasks import EvalError
    from omniphi.media import MediaError
    from omniphi.presets import MissingWeightsError
    from omniphi.processing import SampleTooLongError
    from omniphi.runtime.assistant import TranscriptionUnavailableError
    from omniphi.runtime.trained import TrainedOutputError
    from omniphi.train.recipe import RecipeError

    return [CliError, MediaError, MissingWeightsError, TranscriptionUnavailableError, SampleTooLongError,
            TrainedOutputError, RecipeError, EvalError, DataFileError, DeviceError]


def test_every_user_facing_error_derives_from_user_error():
    for error_type in user_errors():
        assert issubclass(error_type, UserError), error_type
        assert is_user_error(error_type("x"))


@pytest.mark.parametrize("error, expected", [(FileNotFoundError("f"), True), (ValueError("v"), True),
                                             (RuntimeError("bug"), False), (KeyError("k"), False),
                                             (AssertionError(), False)])
def test_builtin_errors_are_classified_by_type(error, expected):
    assert is_user_error(error) is expected


def test_a_renamed_lookalike_is_not_a_user_error():
    """The decision is by type: a class that is merely called like a user error is a bug."""
    MissingWeightsError = type("MissingWeightsError", (RuntimeError,), {})
    assert not is_user_error(MissingWeightsError("x"))


@pytest.mark.parametrize("error, status", [(CliError("bad file"), 2), (RuntimeError("bug"), 1)])
def test_errors_become_one_line_with_their_exit_status(capsys, error, status):
    def command(args):
        raise error

    assert run_reporting_errors("omniphi test", command, None) == status
    assert capsys.readouterr().err == f"omniphi test: error: {error}\n"


@pytest.mark.parametrize("command", ["ask", "chat", "serve", "eval"])
def test_model_options_parse_for_every_answering_command(command):
    extra = ["--task", "pope", "--data", "x"] if command == "eval" else []
    args = cli.build_parser(command).parse_args([command, "--model", "tiny", "--device", "cpu", "--dtype", "bfloat16",
                                                 "--quantize", "int8", *extra])
    assert (args.model, args.device, args.dtype, args.quantize) == ("tiny", "cpu", "bfloat16", "int8")
    defaults = cli.build_parser(command).parse_args([command, *extra])
    assert (defaults.device, defaults.dtype, defaults.quantize) == ("auto", "auto", "auto")


def test_ask_passes_the_model_options_to_the_loader(monkeypatch, capsys):
    from omniphi.runtime.assistant import Assistant

    seen = {}

    def load(spec, **options):
        seen.update(spec=spec, **options)
        raise CliError("stop here")

    monkeypatch.setattr(Assistant, "load", staticmethod(load))
    status = cli.main(["ask", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--quantize", "int4", "hi"])
    assert status == 2
    assert seen == {"spec": "tiny", "device": "cpu", "dtype": "float32", "quantize": "int4", "media_placement": "auto"}


@pytest.mark.parametrize("given", ["auto", "as_given", "images_first"])
def test_media_placement_overrides_the_models_own(tiny_directory_with_media_first, given):
    """`--media-placement as_given` measures a media-first model (the starter) with the parts as sent;
    auto keeps the model's own."""
    from omniphi.cli_support import load_assistant

    args = cli.build_parser("eval").parse_args(["eval", "--model", str(tiny_directory_with_media_first), "--task", "pope",
                                                "--data", "x", "--media-placement", given])
    expected = "images_first" if given == "auto" else given
    assert load_assistant(args).model.config.media_placement == expected


@pytest.fixture(scope="module")
def tiny_directory_with_media_first(tmp_path_factory):
    from omniphi import runtime
    from omniphi.runtime.loading import save_directory

    loaded = runtime.load("tiny", media_placement="images_first")
    directory = tmp_path_factory.mktemp("media-first")
    save_directory(loaded, directory)
    return directory


def test_bad_dtype_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.build_parser("ask").parse_args(["ask", "--dtype", "int8", "hi"])
    assert caught.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_device_cuda_without_a_gpu_is_one_line_exit_2():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where there is one
    result = subprocess.run([sys.executable, "-m", "omniphi.cli", "ask", "--model", "tiny", "--device", "cuda", "hi"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniphi: error:") and "CUDA" in lines[0], result.stderr
