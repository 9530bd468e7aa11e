"""Success of several evaluations side by side, with 95 % Wilson intervals.

Reads each run's ``summary.json`` (``rtvla eval`` / ``rtvla run``, ``output_dir=``), prints one
JSON line with, per variant, episodes, success and its interval, and, for runs with injected
failures, the episodes a failure hit, the share recovered from (success despite it) and its
interval, per failure kind too; with ``--out``, a bar chart of both with their intervals.
``NAME=DIR1,DIR2`` pools the episodes of several runs of one variant (e.g. more seeds).

    uv run python bench/compare_evals.py flat=outputs/eval/A hierarchy=outputs/eval/B --out fig.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.analysis.stats import wilson_interval


def read(path: Path) -> dict:
    summary = path / "summary.json"
    if not summary.is_file():
        raise SystemExit(f"{summary} does not exist: pass the output_dir= of `rtvla eval`")
    return json.loads(summary.read_text())


def pool(summaries: list[dict]) -> dict:
    """The counts ``row`` reads, summed over several runs of one variant."""
    if len(summaries) == 1:
        return summaries[0]
    out = {"episodes": 0, "success_rate": 0.0, "pushed_episodes": 0, "pushed_success_rate": 0.0,
           "recovered_by_kind": {}, "operator_overrides": 0, "failures": {}}  # fmt: skip
    wins = hit = won = 0
    latencies = []
    for d in summaries:
        out["episodes"] += d["episodes"]
        wins += round(d["success_rate"] * d["episodes"])
        if d.get("pushed_episodes"):
            hit += d["pushed_episodes"]
            won += round(d["pushed_success_rate"] * d["pushed_episodes"])
        for k, v in d.get("recovered_by_kind", {}).items():
            slot = out["recovered_by_kind"].setdefault(k, {"episodes": 0, "recovered": 0})
            slot["episodes"] += v["episodes"]
            slot["recovered"] += v["recovered"]
        for k, v in d.get("failures", {}).items():
            out["failures"][k] = out["failures"].get(k, 0) + v
        out["operator_overrides"] += d.get("operator_overrides", 0)
        if d.get("override_latency_ticks"):
            latencies.append(d["override_latency_ticks"])
    out["success_rate"] = wins / out["episodes"]
    out["pushed_episodes"], out["pushed_success_rate"] = hit, (won / hit if hit else None)
    if latencies:
        out["override_latency_ticks"] = {
            "followed": sum(x["followed"] for x in latencies),
            "max": max(x["max"] for x in latencies if x["max"] is not None),
            "median_per_run": [x["median"] for x in latencies],
        }
    return out


def row(d: dict) -> dict:
    """One variant's figures from its summary."""
    n = d["episodes"]
    wins = round(d["success_rate"] * n)
    out = {"episodes": n, "success": wins / n, "success_ci95": _ci(wins, n)}
    if d.get("pushed_episodes"):
        hit = d["pushed_episodes"]
        won = round(d["pushed_success_rate"] * hit)
        out |= {"failures_injected": hit, "recovered": won / hit, "recovered_ci95": _ci(won, hit),
                "by_kind": {k: f"{v['recovered']}/{v['episodes']}"
                            for k, v in d.get("recovered_by_kind", {}).items()}}  # fmt: skip
    if d.get("operator_overrides"):
        out |= {"operator_overrides": d["operator_overrides"],
                "override_latency_ticks": d["override_latency_ticks"]}  # fmt: skip
    out["failures"] = d.get("failures", {})
    return out


def _ci(k: int, n: int) -> list[float]:
    return [round(x, 3) for x in wilson_interval(k, n)]


def plot(rows: dict[str, dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    bars = ((-0.18, "success", "success"), (0.18, "recovered", "recovered from the failure"))
    for offset, key, label in bars:
        values = [rows[n].get(key) for n in names]
        keep = [i for i, v in enumerate(values) if v is not None]
        if not keep:
            continue
        mid = np.array([values[i] for i in keep])
        ci = np.array([rows[names[i]][f"{key}_ci95"] for i in keep])
        ax.bar(x[keep] + offset, mid, width=0.34, label=label, alpha=0.8)
        ax.errorbar(x[keep] + offset, mid, yerr=[mid - ci[:, 0], ci[:, 1] - mid], fmt="none",
                    ecolor="k", capsize=3)  # fmt: skip
    ax.set_xticks(x, [f"{n}\n({rows[n]['episodes']} ep.)" for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95 % Wilson interval)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_OUTPUT_DIR")
    parser.add_argument("--out", type=Path, default=None, help="bar chart (PNG)")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    rows = {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"{spec!r}: pass NAME=EVAL_OUTPUT_DIR")
        rows[name] = row(pool([read(Path(p)) for p in path.split(",")]))
    if args.out is not None:
        plot(rows, args.out, args.title)
    print(json.dumps({"bench": "compare_evals", **rows}))


if __name__ == "__main__":
    main()
