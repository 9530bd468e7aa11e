"""Success vs delay pooled over several ``rtvla sweep`` runs of one checkpoint and task.

Sweeps run on different episode seeds (``seed=1000 episodes=20``, ``seed=1020
episodes=30``, ...) add up: per executor and delay, successes and episodes are summed and the
95 % Wilson interval is recomputed. Refuses sweeps of different tasks or policies, and two
sweeps whose episodes overlap (the same seed counted twice). Prints one JSON line with the
pooled table and where it agrees with the RTC paper's executor ordering
(``runtime/analysis/ordering.py``); with ``--out``, the success-vs-delay plot of the pooled
table; with ``--markdown``, both tables as markdown after the JSON line. One sweep folder is
a valid input. ``FOLDER:rtc,naive`` takes only those executors from that sweep (e.g. not the
partial point of an executor an interrupted sweep had started, when another sweep ran it whole).

    uv run python bench/pool_sweeps.py outputs/sweep/A outputs/sweep/B:rtc_hard --markdown
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.analysis.ordering import delay_table, ordering_markdown, paper_ordering
from runtime.analysis.seams import plot_seam_metrics
from runtime.analysis.stats import wilson_interval
from runtime.commands.sweep import plot_success


def read(source: str) -> dict:
    """The sweep.json of ``FOLDER`` or ``FOLDER:exec1,exec2`` (only those executors kept)."""
    folder, _, only = source.partition(":")
    path = Path(folder) / "sweep.json" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass the output_dir= of `rtvla sweep`")
    sweep = json.loads(path.read_text())
    if only:
        keep = only.split(",")
        missing = sorted(set(keep) - set(sweep["success_vs_delay"]))
        if missing:
            raise SystemExit(f"{folder} did not run {missing}; it ran "
                             f"{sorted(sweep['success_vs_delay'])}")  # fmt: skip
        sweep["success_vs_delay"] = {k: sweep["success_vs_delay"][k] for k in keep}
        seams = sweep.get("seams", {}).get("executors", {})
        sweep.setdefault("seams", {})["executors"] = {k: v for k, v in seams.items() if k in keep}
    return sweep


def pool(sweeps: list[dict]) -> dict:
    """executor -> str(delay) -> successes, episodes, success, ci95, summed over ``sweeps``."""
    for key in ("task", "server"):
        values = {s[key] for s in sweeps}
        if len(values) > 1:
            raise SystemExit(f"the sweeps differ in {key}: {sorted(values)}; pool one policy")
    trained = {
        str(s["config"].get("rtc_trained_checkpoint"))
        for s in sweeps
        if "rtc_trained" in s["success_vs_delay"]
    }
    if len(trained) > 1:
        raise SystemExit(
            f"the sweeps' rtc_trained rows come from different policies {sorted(trained)}: pool "
            "one (FOLDER:executors leaves a sweep's rtc_trained out)"
        )
    seen: dict[tuple[str, str], set[int]] = {}
    table: dict[str, dict] = {}
    for s in sweeps:
        first = int(s["config"]["seed"])
        for name, row in s["success_vs_delay"].items():
            for d, cell in row.items():
                seeds = set(range(first, first + cell["episodes"]))
                earlier = seen.setdefault((name, d), set())
                if earlier & seeds:
                    raise SystemExit(
                        f"{name} at d={d}: episode seeds {min(earlier & seeds)}... are in two "
                        "sweeps; pool sweeps run with different seed= ranges"
                    )
                earlier |= seeds
                slot = table.setdefault(name, {}).setdefault(d, {"successes": 0, "episodes": 0})
                slot["successes"] += cell["successes"]
                slot["episodes"] += cell["episodes"]
    for row in table.values():
        for cell in row.values():
            k, n = cell["successes"], cell["episodes"]
            cell["success"] = k / n
            cell["ci95"] = [round(b, 4) for b in wilson_interval(k, n)]
    return {
        name: dict(sorted(row.items(), key=lambda kv: int(kv[0]))) for name, row in table.items()
    }


def seam_figures(sweeps: list[dict], executors: list[str]) -> dict:
    """{"delay", "executors": name -> seam figures, "ignored"} of ``executors``, each from the
    first sweep that measured it at the first sweep's seam delay; sweeps that measured seams
    at another delay are listed in "ignored" (seams at different delays do not compare)."""
    measured = [s for s in sweeps if s.get("seams", {}).get("executors")]
    delay = measured[0]["seams"]["delay"] if measured else None
    found: dict = {}
    ignored = []
    for s in measured:
        if s["seams"]["delay"] != delay:
            ignored.append({"seed": s["config"]["seed"], "delay": s["seams"]["delay"]})
            continue
        for name, m in s["seams"]["executors"].items():
            if name in executors:
                found.setdefault(name, m)
    return {"delay": delay, "executors": {n: found[n] for n in executors if n in found},
            "ignored": ignored}  # fmt: skip


def success_markdown(table: dict) -> str:
    """Executors as rows, delays as columns: "72 % (63-80 %, 100)" (success, interval, n)."""
    delays = sorted({int(d) for row in table.values() for d in row})

    def text(c: dict | None) -> str:
        if c is None:
            return "-"
        lo, hi = c["ci95"]
        return f"{c['success']:.0%} ({100 * lo:.0f}-{hi:.0%}, {c['episodes']})"

    rows = {name: [text(row.get(str(d))) for d in delays] for name, row in table.items()}
    return delay_table("executor", delays, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+",
                        help="rtvla sweep output folders; FOLDER:exec1,exec2 takes only those "
                             "executors from that one")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="success-vs-delay plot (PNG)")
    parser.add_argument("--hz", type=float, default=30.0, help="control rate, for the x label")
    parser.add_argument("--markdown", action="store_true", help="also print markdown tables")
    parser.add_argument(
        "--seams-out",
        type=Path,
        default=None,
        help="seam ratio and jerk per executor (PNG), at the first sweep's "
        "seam delay, each executor's from the first sweep with it",
    )
    parser.add_argument("--executors", nargs="+", default=None,
                        help="keep only these executors (e.g. leave out one an interrupted "
                             "sweep ran partly)")  # fmt: skip
    args = parser.parse_args()
    sweeps = [read(p) for p in args.sweeps]
    table = pool(sweeps)
    if args.executors is not None:
        missing = sorted(set(args.executors) - set(table))
        if missing:
            raise SystemExit(f"no sweep ran {missing}; the sweeps ran {sorted(table)}")
        table = {name: table[name] for name in args.executors}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot_success(
            table, args.out, f"inference delay d (ticks at {args.hz:g} Hz)",
            f"{sweeps[0]['task']}: success vs inference delay (pooled sweeps)",
        )  # fmt: skip
    seams = seam_figures(sweeps, list(table))
    if args.seams_out is not None and seams["executors"]:
        args.seams_out.parent.mkdir(parents=True, exist_ok=True)
        plot_seam_metrics(seams["executors"], args.seams_out, delay=seams["delay"])
    sources = list(args.sweeps)
    ordering = paper_ordering(table)
    print(json.dumps({"bench": "pool_sweeps", "task": sweeps[0]["task"], "sweeps": sources,
                      "success_vs_delay": table, "paper_ordering": ordering,
                      "seams": seams}))  # fmt: skip
    if args.markdown:
        print(f"\n{success_markdown(table)}\n\n{ordering_markdown(ordering)}")


if __name__ == "__main__":
    main()
