"""Fixtures of the eval tests: the tiny assistant and a generated shapes dataset."""

import pytest

from tests.conftest import require_program


@pytest.fixture(scope="session")
def tiny_assistant(tiny):
    from omniphi.runtime.assistant import Assistant

    return Assistant(tiny)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small dataset written by the shapes generator, spoken questions included."""
    require_program("espeak-ng")
    from omniphi.data.shapes import generate_shapes
    from omniphi.data.tts import Speaker

    root = tmp_path_factory.mktemp("shapes")
    speaker = Speaker(cache_dir=root / "tts-cache")
    generate_shapes(root / "data", n=8, seed=3, image_size=64, questions_per_image=2, test_frac=0.25, speaker=speaker, jobs=2)
    return root / "data"
