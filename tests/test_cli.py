"""The `omniphi` command as a user runs it (subprocesses)."""

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
