import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tiny models' ops are microseconds long: with 2 threads on a shared 2-core machine they
    spend their time waiting for each other (10× slower steps under load). Subprocesses get
    OMP_NUM_THREADS=1 from run_module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A small generated shapes dataset (36 train questions, 12 captions, 32 px images)."""
    from omniphi.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, n=16, seed=0, image_size=32)
    return root


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.jsonl"
    lines = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, how are you today? I am fine, thank you.",
        "What is the capital of France? The capital of France is Paris.",
        "Describe the picture in detail.",
    ]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return path


def make_recipe(stage: str, output_dir: Path, train: list[dict], **sections) -> dict:
    """A recipe mapping on the tiny preset with small, fast defaults; `sections` are merged in."""
    recipe = {
        "stage": stage,
        "model": {"base": "tiny"},
        "data": {"train": train, "max_length": 256},
        "training": {"output_dir": str(output_dir), "max_steps": 4, "batch_size": 2, "learning_rate": 1e-3,
                     "logging_steps": 1, "save_steps": 1000, "warmup_ratio": 0.0, "plots": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **copy.deepcopy(value)}
        else:
            recipe[key] = copy.deepcopy(value)
    return recipe


def train(recipe: dict, resume=None):
    from omniphi.train.recipe import load_recipe
    from omniphi.train.run import run_training

    return run_training(load_recipe(recipe), resume=resume)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def train_losses(output_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(output_dir) if r["type"] == "train"]


def run_module(*args, timeout=240, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env, **kwargs)
