"""Training loss curves of several runs side by side (e.g. the knowledge-insulation ablation).

Reads each run's ``metrics.jsonl`` (written by ``rtvla train``), plots the flow-matching loss
and, where a run has it, the FAST cross-entropy against the step, smoothed with a moving
average, and prints one JSON line with each run's final (last 50 steps) mean of each term.

    uv run python bench/loss_curves.py NAME=RUN [NAME=RUN ...] --out docs/figures/loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TERMS = ("fm", "fast_ce")
TAIL = 50  # steps averaged for the final figures


def read_metrics(run: Path) -> dict[str, np.ndarray]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass the output= folder of `rtvla train`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = {k for row in rows for k in row}
    return {k: np.array([row.get(k, np.nan) for row in rows], float) for k in keys}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("outputs/loss_curves.png"))
    parser.add_argument("--window", type=int, default=25, help="moving-average window (steps)")
    args = parser.parse_args()
    runs = dict(r.rsplit("=", 1) if "=" in r else (Path(r).name, r) for r in args.runs)
    metrics = {name: read_metrics(Path(run)) for name, run in runs.items()}

    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, len(TERMS))
    for ax, term in zip(axes, TERMS, strict=True):
        for name, m in metrics.items():
            if term in m and np.isfinite(m[term]).any():
                y = smooth(m[term], args.window)
                ax.plot(m["step"][len(m["step"]) - len(y) :], y, label=name, lw=1.2)
        ax.set_title({"fm": "flow-matching loss", "fast_ce": "FAST cross-entropy"}[term])
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    final = {
        name: {t: float(np.nanmean(m[t][-TAIL:])) for t in TERMS if t in m} | {
            "steps": int(m["step"][-1])}
        for name, m in metrics.items()
    }  # fmt: skip
    print(json.dumps({"final_mean_last_50_steps": final, "plot": str(args.out)}))


if __name__ == "__main__":
    main()
