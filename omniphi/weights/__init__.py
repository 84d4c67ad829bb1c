"""Where weights come from: packaged files (the starter's), converters for them, the hub and the cache."""

from pathlib import Path

# The starter's trained weights, committed in the package (written by `make starter`).
STARTER_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "starter_weights"
