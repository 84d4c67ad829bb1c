"""PNG plots of a run's JSONL log: training/validation loss and learning rate(s) against the step.

    python -m omniphi.train.plots runs/x/log.jsonl [--out runs/x/plots]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a half-written last line of a killed run
    return records


def plot_log(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write loss.png and lr.png; returns their paths (none when the log has no training entries)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training server
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train" and "loss" in r]
    evals = [r for r in records if r.get("type") == "eval" and "eval_loss" in r]
    if not train:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", linewidth=1.2)
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")
    plt.close(fig)
    written.append(out_dir / "loss.png")

    lr_keys = sorted({k for r in train for k in r if k.startswith("lr_")}) or ["learning_rate"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    for key in lr_keys:
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            ax.plot(*zip(*points), label=key.removeprefix("lr_"), linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "lr.png")
    plt.close(fig)
    written.append(out_dir / "lr.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniphi.train.plots", description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: plots/ next to the log")
    args = parser.parse_args(argv)
    written = plot_log(args.log, args.out or args.log.parent / "plots")
    print("\n".join(map(str, written)) or "no training entries in the log")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
