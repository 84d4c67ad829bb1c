"""Silence the warnings that libraries print on every run but that say nothing about the user's run.

Each entry names the exact logger or warning category and message; everything else, including
other warnings from the same libraries, stays visible. Installed once when `omniphi` is imported
(stdlib only, no library is imported here), so the CLI, the server and Python users all see the same.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger, message pattern): log records that are noise for every omniphi run.
NOISY_LOG_RECORDS = (
    # peft imports bitsandbytes whenever it is installed; its CPU backend then looks for an optional
    # kernel package that only speeds up 4-bit matmuls, and says so even when nothing is quantized.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    # torchao (imported by transformers' quantizer registry when installed) probes its CUDA-only
    # kernels and Triton on every import.
    ("torchao", r"Failed to load \S*torchao/_C_\w*\.\S*\.so: Could not load this library"),
    ("torchao.kernel.intmm", r"Detected no triton"),
    ("torch.utils._pytree", r"<enum '\w+'> is an Enum subclass and is now natively supported by torch\.compile"),
    # omniphi grows the starter LLM's embeddings for <image>/<audio> on purpose (presets.assemble).
    ("transformers.modeling_utils", r"^The new embeddings will be initialized from a multivariate normal distribution"),
    # transformers' own Whisper generate hands its token bans to the generic generate as arguments.
    ("transformers.generation.utils", r"^Passing `generation_config` together with generation-related "
                                      r"arguments=\(\{'(begin_)?suppress_tokens', '(begin_)?suppress_tokens'\}\)"),
)

# (category, message pattern, module): warnings.warn calls that are noise.
NOISY_WARNINGS = (
    # peft 0.21 reads the property transformers 5 deprecated; the user never calls it.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def silence_library_noise() -> None:
    """Install the filters (idempotent)."""
    for logger_name, pattern in NOISY_LOG_RECORDS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    for category, message, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
