"""Library warnings that concern no omniphi run are silenced, narrowly; real warnings stay."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import omniphi  # noqa: F401 — installs the filters
from tests.conftest import ROOT


def test_known_noise_is_dropped_and_other_records_of_the_same_logger_stay(caplog):
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        logger.warning("4-bit weights are on the wrong device")
    assert [r.getMessage() for r in caplog.records] == ["4-bit weights are on the wrong device"]


def test_only_the_deprecated_property_warning_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        omniphi.library_noise.silence_library_noise()
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                               "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("`something_else` is deprecated", FutureWarning, "modeling_utils.py", 2,
                               module="transformers.modeling_utils")
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]


def test_loading_peft_and_a_lora_prints_no_library_warning():
    """The real sources: peft imports bitsandbytes, and wrapping a model reads the deprecated property."""
    code = (
        "import logging, omniphi; logging.basicConfig(level=logging.WARNING)\n"
        "import peft, torch\n"
        "from omniphi import presets\n"
        "model = presets.build('tiny').model.language_model\n"
        "peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=['q_proj']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "is_gradient_checkpointing" not in done.stderr, done.stderr


def test_transformers_info_about_omniphi_s_own_choices_is_dropped_but_other_generation_warnings_stay(caplog):
    logger = logging.getLogger("transformers.generation.utils")
    with caplog.at_level(logging.WARNING):
        logger.warning("Passing `generation_config` together with generation-related arguments=({'suppress_tokens', "
                       "'begin_suppress_tokens'}) is deprecated")
        logger.warning("Passing `generation_config` together with generation-related arguments=({'temperature'}) "
                       "is deprecated")
        logging.getLogger("transformers.modeling_utils").warning(
            "The new embeddings will be initialized from a multivariate normal distribution that has old embeddings'")
    assert [r.getMessage() for r in caplog.records] == [
        "Passing `generation_config` together with generation-related arguments=({'temperature'}) is deprecated"]
