"""Seam smoothness: how much the executed actions jump where one chunk hands over to the next.

From a ``RunLog``'s tick columns (action (T, A) with NaN on holds, chunk, index, planned, tick),
each episode on its own:

- a *seam* is a pair of consecutive executed actions (holds skipped) from different chunks; a
  *within-chunk change* is a pair of consecutive executed actions of the same chunk. A change
  is measured as the largest absolute difference over joints. Skipping holds means a
  synchronous executor's seam spans the ticks it held still: it compares the target before the
  pause with the one after, the jump the robot is asked to make.
- ``seam_ratio`` = the largest seam change / the 99th percentile of within-chunk changes: about
  1 when chunks join as smoothly as they run (RTC's aim), well above 1 when a new chunk jumps
  (naive async execution; Black, Galliker, Levine 2025, "Real-Time Execution of Action
  Chunking Flow Policies").
- ``mean_jerk`` = the mean absolute third finite difference of the executed actions times
  hz^3, over runs of consecutive executed ticks only (a hold breaks a run). Actions are joint
  position targets, so it is in the action's units per s^3 (the sim's, like an SO-101
  follower's: degrees, and 0-100 for the gripper).

Every figure is None when there is nothing to measure it on (e.g. no seam in the run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.robot.runlog import RunLog
from runtime.robot.runlog import _stat as stat  # percentile q (mean for None), None if empty

JERK_ORDER = 3  # jerk is the third derivative of a position


def seam_changes(log: RunLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seam changes (n, A), their ticks (n,), within-chunk changes (m, A)) of one run.

    A change is the absolute action difference between two consecutive executed actions;
    its tick is that of the second one, the first action of the new chunk at a seam.
    """
    t = log.ticks
    planned = t["planned"]
    actions = t["action"][planned].astype(np.float64)  # (P, A)
    chunks, ticks = t["chunk"][planned], t["tick"][planned]  # (P,)
    changes = np.abs(np.diff(actions, axis=0))  # (P - 1, A)
    seam = chunks[1:] != chunks[:-1]  # (P - 1,)
    return changes[seam], ticks[1:][seam], changes[~seam]


def jerks(log: RunLog) -> np.ndarray:
    """|third finite difference| * hz^3 (n, A) over each run of consecutive executed ticks."""
    t = log.ticks
    executed = np.flatnonzero(t["planned"])  # row indices, one row per tick
    runs = np.split(executed, np.flatnonzero(np.diff(executed) > 1) + 1)
    parts = [
        np.abs(np.diff(t["action"][run].astype(np.float64), n=JERK_ORDER, axis=0))
        for run in runs
        if len(run) > JERK_ORDER
    ]
    if not parts:
        return np.empty((0, t["action"].shape[1]))
    return np.concatenate(parts) * log.hz**JERK_ORDER


def seam_metrics(logs: RunLog | Sequence[RunLog]) -> dict[str, float | int | None]:
    """Seam and smoothness figures of one executor's runs (e.g. its episodes), pooled.

    seams: how many; seam_change_max / seam_change_mean: the largest / mean seam change
    (max over joints); within_p99: 99th percentile of within-chunk changes (same norm);
    seam_ratio: seam_change_max / within_p99; mean_jerk: action units/s^3 (module docstring).
    """
    logs = [logs] if isinstance(logs, RunLog) else list(logs)
    if not logs:
        raise ValueError("seam_metrics needs at least one run log")
    seam, within, jerk = [], [], []
    for log in logs:
        s, _, w = seam_changes(log)
        seam.append(s.max(axis=1, initial=0.0))
        within.append(w.max(axis=1, initial=0.0))
        jerk.append(jerks(log).ravel())
    seam, within = np.concatenate(seam), np.concatenate(within)
    seam_max, within_p99 = stat(seam, 100), stat(within, 99)
    ratio = None
    if seam_max is not None and within_p99 is not None and within_p99 > 0:
        ratio = seam_max / within_p99
    return {
        "seams": len(seam),
        "seam_change_max": seam_max,
        "seam_change_mean": stat(seam, None),
        "within_p99": within_p99,
        "seam_ratio": ratio,
        "mean_jerk": stat(np.concatenate(jerk), None),
    }


def plot_seams(
    logs: Mapping[str, RunLog | Sequence[RunLog]],
    path: str | Path,
    *,
    joint: int | None = None,
    seams: int = 3,
    window: int = 15,
    joint_names: Sequence[str] | None = None,
) -> Path:
    """Plot one joint's executed actions around a few seams, one subplot per executor.

    logs: executor name -> its runs; each subplot shows the first run with a seam, from
    ``window`` ticks before its first plotted seam to ``window`` after the last of ``seams``
    consecutive ones (the first seams with a full window before them), with every seam tick
    marked; holds are gaps. joint: None picks the joint with the largest seam change overall.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, Agg renders the PNG

    if not logs:
        raise ValueError("plot_seams needs the run logs of at least one executor")
    runs = {name: [v] if isinstance(v, RunLog) else list(v) for name, v in logs.items()}
    if joint is None:
        joint = _loudest_joint([log for v in runs.values() for log in v])
    label = joint_names[joint] if joint_names is not None else f"joint {joint}"
    fig = Figure(figsize=(9, 2.2 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (name, executor_logs) in zip(axes, runs.items(), strict=True):
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel(label)
        shown = _seam_window(executor_logs, seams, window)
        if shown is None:
            ax.text(0.5, 0.5, "no seam", transform=ax.transAxes, ha="center", va="center")
            continue
        log, lo, hi, seam_ticks = shown
        ticks = log.ticks["tick"][lo:hi]
        ax.plot(ticks, log.ticks["action"][lo:hi, joint], ".-", ms=3, lw=1)
        for i, tick in enumerate(seam_ticks):
            ax.axvline(tick, color="tab:red", ls="--", lw=0.8, label="seam" if i == 0 else None)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("tick")
    fig.suptitle(f"executed actions around chunk seams ({label})")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_seam_metrics(
    metrics: Mapping[str, Mapping[str, float | int | None]], path: str | Path, *, delay: int
) -> Path:
    """Bar charts of seam_ratio and mean_jerk per executor (``seam_metrics`` of each).

    The seam ratio's panel marks 1 (chunks joining as smoothly as they run); an executor
    without a figure (no seam in its runs) gets an empty slot labelled "-".
    """
    from matplotlib.figure import Figure

    if not metrics:
        raise ValueError("plot_seam_metrics needs the seam metrics of at least one executor")
    names = list(metrics)
    fig = Figure(figsize=(4 + 0.9 * len(names), 3.4), layout="constrained")
    ratio_ax, jerk_ax = fig.subplots(1, 2)
    for ax, key, label in (
        (ratio_ax, "seam_ratio", "largest seam change / p99 within-chunk change"),
        (jerk_ax, "mean_jerk", "mean |jerk| (action units / s^3)"),
    ):
        values = [metrics[n][key] for n in names]
        ax.bar(names, [0.0 if v is None else v for v in values], color="tab:blue")
        for i, v in enumerate(values):
            ax.annotate("-" if v is None else f"{v:.3g}", (i, 0.0 if v is None else v),
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    ratio_ax.axhline(1.0, color="tab:gray", ls="--", lw=0.8)
    fig.suptitle(f"seam smoothness per executor at d = {delay}", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _loudest_joint(logs: list[RunLog]) -> int:
    """The joint with the largest seam change over ``logs`` (0 if there is no seam)."""
    changes = [seam_changes(log)[0] for log in logs]
    changes = [c for c in changes if len(c)]
    return int(np.concatenate(changes).max(axis=0).argmax()) if changes else 0


def _seam_window(
    logs: list[RunLog], seams: int, window: int
) -> tuple[RunLog, int, int, np.ndarray] | None:
    """(run, first row, end row, seam ticks in between) to plot, or None without seams."""
    for log in logs:
        _, ticks, _ = seam_changes(log)
        if len(ticks) == 0:
            continue
        start = int(np.searchsorted(ticks, log.ticks["tick"][0] + window))
        start = min(start, max(len(ticks) - seams, 0))
        chosen = ticks[start : start + seams]
        row = np.searchsorted(log.ticks["tick"], chosen)  # tick -> row
        lo, hi = (
            max(int(row[0]) - window, 0),
            min(int(row[-1]) + window + 1, len(log.ticks["tick"])),
        )
        shown = (ticks >= log.ticks["tick"][lo]) & (ticks < log.ticks["tick"][hi - 1] + 1)
        return log, lo, hi, ticks[shown]
    return None
