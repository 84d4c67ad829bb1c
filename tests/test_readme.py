"""The README's examples run as written.

Every fenced ```python / ```bash block is executed in a scratch directory that holds the files the
examples name (photo.jpg, question.wav, speech.webm), with `.venv` beside them. A block that cannot
run here (GPU, hub weights, a terminal, long training) is marked in the README itself with an HTML
comment on the line before its fence:

    <!-- readme-test: skip (why) -->

so new README sections are tested without touching this file. Python blocks that talk to
`http://127.0.0.1:8000` get the URL of a starter server that this test starts on a free port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import FIXTURES, ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\s*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->")
RUNNABLE = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
README_SERVER = "http://127.0.0.1:8000"


@dataclass
class Example:
    language: str  # "python" or "bash"
    code: str
    line: int
    skip: str | None  # the reason given in the README's marker

    @property
    def id(self) -> str:
        return f"{self.language}-line{self.line}"


def readme_examples(text: str) -> list[Example]:
    examples = []
    for match in FENCE.finditer(text):
        language = RUNNABLE.get(match.group(1))
        if language is None:
            continue
        before = text[: match.start()].rstrip().splitlines()
        marker = SKIP.search(before[-1]) if before else None
        examples.append(Example(language, match.group(2), text.count("\n", 0, match.start()) + 1,
                                marker.group(1) if marker else None))
    return examples


EXAMPLES = readme_examples(README.read_text())


def test_the_marker_parser_finds_blocks_and_reasons():
    text = "# x\n\n<!-- readme-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n```python\nprint(1)\n```\n"
    first, second = readme_examples(text)
    assert (first.language, first.code, first.skip) == ("bash", "nvidia-smi\n", "needs a GPU")
    assert (second.language, second.code, second.skip) == ("python", "print(1)\n", None)
    assert [e for e in EXAMPLES if e.skip is None], "the README has no example that runs"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory with the files the examples name and the project's .venv."""
    root = tmp_path_factory.mktemp("readme")
    Image.open(FIXTURES / "starter-shapes" / "circle.png").convert("RGB").save(root / "photo.jpg")
    shutil.copy(FIXTURES / "speech" / "capital.wav", root / "question.wav")
    shutil.copy(FIXTURES / "speech" / "capital.webm", root / "speech.webm")
    venv = ROOT / ".venv"
    (root / ".venv").symlink_to(venv if venv.exists() else Path(sys.prefix))
    return root


@pytest.fixture(scope="module")
def starter_server(scratch):
    """`omniphi serve --model starter` on a free port; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(scratch / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "omniphi.cli", "serve", "--model", "starter", "--port", str(port),
                               "--data-dir", str(scratch / "server-data")], cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the starter server did not start: {(scratch / 'server.log').read_text()}")
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def _env() -> dict:
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.slow
@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.skip is None], ids=lambda e: e.id)
def test_readme_example_runs(example, scratch, request):
    code = example.code
    if example.language == "python":
        if README_SERVER in code:
            code = code.replace(README_SERVER, request.getfixturevalue("starter_server"))
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=scratch, env=_env(), capture_output=True, text=True, timeout=1200,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"README line {example.line}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"README line {example.line} printed nothing"
    # a Python None printed by mistake (the streaming example once began with one)
    assert not re.search(r"^None", done.stdout, re.M), done.stdout
