import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# Everything runs offline; converted starter weights are cached inside the checkout so repeated
# runs (and CI's second run on the same machine) skip the conversions.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMNIPHI_CACHE", str(ROOT / ".cache" / "omniphi"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def require_program(name: str) -> str:
    """The path of system program `name` (espeak-ng, flite, chromium); a missing one fails the test
    with the one line that says how to install it, never a skip (`make test` installs them first)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (installs the Debian package {name})",
                    pytrace=False)
    return path


@pytest.fixture
def espeak_ng() -> str:
    return require_program("espeak-ng")


@pytest.fixture
def flite() -> str:
    return require_program("flite")


@pytest.fixture(scope="session")
def tiny():
    from omniphi import runtime

    return runtime.load("tiny")


@pytest.fixture(scope="session")
def tiny_chatml():
    from omniphi import presets

    return presets.load_tiny(flavour="chatml")


@pytest.fixture(scope="session")
def starter_assistant():
    from omniphi.runtime.assistant import Assistant

    return Assistant.load("starter")


def tone(seconds: float, freq: float = 440.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
