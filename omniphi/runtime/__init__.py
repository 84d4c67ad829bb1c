"""The bottom inference layer: loading a model for inference and the Assistant that answers with it.

Everything that answers (the CLI, the server, `omniphi eval`, the starter build) goes through this
package; it imports nothing above it (no cli, serve, train, eval or starter modules).

    loading.py    load(spec, device=, dtype=, quantize=) for presets, model directories, training outputs
    trained.py    the training-output format, read side (chains of stages, LoRA, QLoRA round trip)
    devices.py    --device / --dtype resolution (auto: CUDA when present; bf16 where it measures faster)
    quantize.py   int8 / int4 weight-only LLM layers
    assistant.py  the Assistant
"""

from omniphi.presets import LoadedModel
from omniphi.runtime.loading import load

__all__ = ["LoadedModel", "load"]
