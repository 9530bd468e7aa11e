"""Success against training steps, with the loss curves, of several runs side by side (e.g.
knowledge insulation vs naive co-training vs flow only, evaluated at several checkpoints).

Each run is NAME=RUN_DIR (a training output with ``metrics.jsonl`` and ``step_*`` or
``checkpoints/step_*`` folders); ``--evals`` are the JSON lines ``rtvla eval`` printed (one
file each), matched to a run by the checkpoint they name. Left: success with its 95 % Wilson
interval at each evaluated step; right: the smoothed loss terms. Prints one JSON line with the
table (run, step, episodes, success, interval, failure classes).

    uv run python bench/success_vs_steps.py KI=outputs/gpu/pick_ki naive=outputs/gpu/pick_naive \\
        --evals outputs/gpu/evalpick_*.json --out docs/figures/pick_ki_vs_steps.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ holds loss_curves.py

from loss_curves import read_metrics, smooth

from runtime.analysis.stats import wilson_interval

STEP = re.compile(r"step_(\d+)")


def evaluations(paths: list[Path], runs: dict[str, Path]) -> list[dict]:
    """One row per eval JSON whose checkpoint lies under one of ``runs``."""
    rows = []
    for path in paths:
        text = path.read_text().strip()
        try:
            result = json.loads(text.splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"skipping {path}: no eval JSON line (did it finish?)", file=sys.stderr)
            continue
        checkpoint = Path(result["checkpoint"]).resolve()
        for name, run in runs.items():
            if run.resolve() in (checkpoint, *checkpoint.parents):
                match = STEP.search(checkpoint.name)
                if match is None:
                    raise SystemExit(f"{checkpoint} names no step_N checkpoint: evaluate one")
                n, k = int(result["episodes"]), round(result["success_rate"] * result["episodes"])
                rows.append({
                    "run": name, "step": int(match.group(1)), "episodes": n, "successes": k,
                    "success": k / n, "ci95": [round(v, 3) for v in wilson_interval(k, n)],
                    "failures": result.get("failures", {}), "eval": str(path),
                })  # fmt: skip
    return sorted(rows, key=lambda r: (r["run"], r["step"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--evals", nargs="+", type=Path, required=True, help="eval JSON files")
    parser.add_argument("--out", type=Path, default=Path("outputs/success_vs_steps.png"))
    parser.add_argument("--title", default="success against training steps")
    parser.add_argument("--window", type=int, default=50, help="loss moving average (steps)")
    args = parser.parse_args()
    runs = {n: Path(r) for n, r in (a.rsplit("=", 1) for a in args.runs)}
    missing = [str(r) for r in runs.values() if not r.is_dir()]
    if missing:
        raise SystemExit(f"no such run folder: {missing}")
    rows = evaluations(args.evals, runs)
    if not rows:
        raise SystemExit("no eval JSON names a checkpoint of these runs")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4), layout="constrained")
    ax_s, ax_fm, ax_ce = fig.subplots(1, 3)
    metrics_of = {name: read_metrics(run) for name, run in runs.items()}
    # the third panel: FAST cross-entropy, or the scene-state loss where no run has FAST
    third = "fast_ce"
    if not any(np.isfinite(m.get("fast_ce", [np.nan])).any() for m in metrics_of.values()):
        third = "aux_env"
    for i, name in enumerate(runs):
        mine = [r for r in rows if r["run"] == name]
        color = f"C{i}"
        if mine:
            steps = np.array([r["step"] for r in mine])
            rate = np.array([r["success"] for r in mine])
            lo, hi = np.array([r["ci95"] for r in mine]).T
            ax_s.errorbar(steps, 100 * rate, yerr=100 * np.stack([rate - lo, hi - rate]),
                          marker="o", capsize=3, label=name, color=color)  # fmt: skip
        metrics = metrics_of[name]
        for ax, term in ((ax_fm, "fm"), (ax_ce, third)):
            if term in metrics and np.isfinite(metrics[term]).any():
                y = smooth(metrics[term], args.window)
                ax.plot(metrics["step"][len(metrics["step"]) - len(y) :], y, label=name,
                        color=color, lw=1.2)  # fmt: skip
    ax_s.set(title=args.title, xlabel="training step", ylabel="success % (95 % CI)",
             ylim=(-3, 103))  # fmt: skip
    ax_fm.set(title="flow-matching loss", xlabel="step", yscale="log")
    ax_ce.set(title="FAST cross-entropy" if third == "fast_ce" else "scene-state loss",
              xlabel="step", yscale="log")  # fmt: skip
    for ax in (ax_s, ax_fm, ax_ce):
        ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(json.dumps({"table": rows, "plot": str(args.out)}))


if __name__ == "__main__":
    main()
