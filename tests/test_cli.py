"""The `omniphi` command as a user runs it (subprocesses)."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import FIXTURES, ROOT

SPEECH = FIXTURES / "speech"


def omniphi(*args, input_text=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "omniphi.cli", *args], input=input_text, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniphi: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_commands():
    result = omniphi("--help")
    assert result.returncode == 0
    for command in ("ask", "chat", "transcribe", "serve"):
        assert command in result.stdout


def test_ask_tiny_streams_an_answer_with_stats(tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    result = omniphi("ask", "--model", "tiny", "--image", str(image), "--audio", str(SPEECH / "capital.wav"),
                     "--max-new-tokens", "5", "--stats", "What is this?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "answer tokens" in result.stderr and "tokens/s" in result.stderr


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, ""),  # a truncated JPEG
    (b"this is not an image at all", ""),
])
def test_bad_image_is_one_line_exit_2(tmp_path, content, needle):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    assert_one_line_error(omniphi("ask", "--model", "tiny", "--image", str(bad), "hi"), str(bad), needle)


def test_missing_and_undecodable_audio(tmp_path):
    assert_one_line_error(omniphi("ask", "--model", "tiny", "--audio", str(tmp_path / "nope.wav"), "hi"), "not found")
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(os.urandom(4000))
    assert_one_line_error(omniphi("transcribe", str(noise)), str(noise))


def test_bad_arguments_exit_2():
    assert omniphi("ask", "--model", "tiny", "--temperature", "abc", "hi").returncode == 2
    assert_one_line_error(omniphi("ask", "--model", "tiny", "--temperature", "5", "hi"), "temperature")
    assert_one_line_error(omniphi("ask", "--model", "no-such-model", "hi"), "no-such-model")
    assert_one_line_error(omniphi("ask", "--model", "tiny"), "nothing to ask")
    assert_one_line_error(omniphi("transcribe", "--model", "tiny", str(SPEECH / "capital.wav")), "speech recogniser")


def test_chat_repl_commands(tmp_path):
    image = tmp_path / "blue.png"
    Image.new("RGB", (20, 20), (0, 0, 255)).save(image)
    script = f"/image {image}\nWhat colour?\n/image {tmp_path / 'missing.png'}\n/reset\nHello\n/exit\n"
    result = omniphi("chat", "--model", "tiny", "--max-new-tokens", "3", input_text=script)
    assert result.returncode == 0, result.stderr
    assert "[image attached" in result.stderr
    assert "image file not found" in result.stderr  # reported, the chat went on
    assert "[conversation cleared]" in result.stderr
    assert result.stdout.count("assistant> ") == 2


def test_chat_audio_line_alone_sends_the_clip_as_the_question(monkeypatch, capsys, tmp_path):
    from omniphi import cli
    from omniphi.chat import Done, GenerationSettings, Token

    asked = []

    class Recorder:
        name = "recorder"
        generation_defaults = GenerationSettings()

        def stream(self, messages, settings, audio_mode):
            asked.append([part["type"] for part in messages[-1]["content"]])
            yield Token("ok")
            yield Done("stop", 1, 1)

    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    lines = iter([f"/audio {SPEECH / 'capital.wav'}", f"/image {image}", f"/audio {SPEECH / 'fox.wav'}",
                  "and now?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    monkeypatch.setattr(cli, "load_assistant", lambda args: Recorder())
    assert cli.main(["chat"]) == 0
    # each /audio line is a turn of its own (with the image attached before it); typed text stays text
    assert asked == [["audio"], ["image", "audio"], ["text"]]
    assert capsys.readouterr().out.count("assistant> ") == 3


def test_every_help_shows_the_defaults():
    from omniphi.cli import _PLUGGED_COMMANDS, build_parser

    parser = build_parser()
    ask_help = omniphi("ask", "--help").stdout
    assert "(default: starter)" in ask_help and "(default: None)" not in ask_help
    for option in ("--image", "--audio"):
        assert next(a for a in parser._subparsers._group_actions[0].choices["ask"]._actions
                    if option in a.option_strings).help
    for name in ["ask", "chat", "transcribe", "export-llava"] + [c[0] for c in _PLUGGED_COMMANDS]:
        sub = build_parser(name)._subparsers._group_actions[0].choices[name]
        text = sub.format_help()
        for action in sub._actions:
            default = action.default
            if action.help is None or default in (None, argparse.SUPPRESS) or default is False or default == []:
                continue
            if isinstance(default, (str, int, float)) and action.option_strings:
                assert f"(default: {default})" in " ".join(text.split()), (name, action.option_strings)


@pytest.mark.slow
def test_transcribe_with_the_starter_loads_only_whisper():
    """`omniphi transcribe` starts fast: the LLM side (omniphi.presets and what it imports) stays unloaded."""
    code = ("import sys; from omniphi.cli import main; assert main(['transcribe', sys.argv[1]]) == 0; "
            "print('presets imported:', 'omniphi.presets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(SPEECH / "capital.wav")], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["What is the capital of France?", "presets imported: False"]
