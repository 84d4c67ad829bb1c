"""`omniphi merge DIR OUT`: a training output (adapter + trainables on a base) → a full model directory.

The result no longer needs its base or peft: it is what `omniphi.runtime.loading.save_directory` writes for any model.
For a QLoRA run the adapter is merged into the NF4-dequantised weights the run trained against (see
omniphi.runtime.trained.nf4_round_trip_), so the merged model computes what the adapter model computed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from omniphi.model_card import copy_model_files
from omniphi.runtime.loading import load_weights, save_directory
from omniphi.runtime.trained import MARKER, TrainedOutputError, is_training_output, read_meta

MERGED_FROM = "merged_from.json"


def merge_output(directory: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    directory, out = Path(directory), Path(out)
    if not is_training_output(directory):
        raise TrainedOutputError(f"{directory} is not a training output (no {MARKER})")
    if out.exists() and any(out.iterdir()):
        raise TrainedOutputError(f"{out} exists and is not empty")
    loaded = load_weights(str(directory), dtype=dtype, merge=True)
    tmp = out.with_name(out.name + ".tmp-merge")
    shutil.rmtree(tmp, ignore_errors=True)
    save_directory(loaded, tmp)
    copy_model_files(directory, tmp)  # the output's generation defaults and card
    (tmp / MERGED_FROM).write_text(json.dumps({"source": str(directory.resolve()), **read_meta(directory)}, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # a merge that died half-way leaves no directory that looks complete
    return out
