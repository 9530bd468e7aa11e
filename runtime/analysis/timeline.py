"""Who chose the instruction, tick by tick: a figure of one run log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.robot.runlog import RunLog

SOURCE_COLORS = {"task": "0.8", "high_level": "tab:blue", "operator": "tab:red"}


def plot_instructions(run_log: RunLog, path: str | Path, title: str = "") -> Path:
    """Actions over ticks above a band coloured by who chose the instruction, each change
    of instruction written where it happens; the high level's correction probability (when
    there is one) over the band, the ticks of an injected failure shaded red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = run_log.ticks
    fig, (top, band) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1.4]}
    )
    top.plot(t["tick"], t["action"], linewidth=1)
    top.set_ylabel("action (planned)")
    top.set_title(title)
    injected = t.get("injected")
    if injected is not None and (injected != "").any():
        where = np.flatnonzero(injected != "")
        top.axvspan(t["tick"][where[0]], t["tick"][where[-1]] + 1, color="tab:red", alpha=0.2,
                    label=f"injected {injected[where[0]]}")  # fmt: skip
        top.legend(loc="upper right", fontsize=7)
    correction = t.get("correction")
    if correction is not None and np.isfinite(correction).any():
        flag = band.twinx()
        flag.plot(t["tick"], correction, color="k", linewidth=1)
        flag.set_ylim(0, 1)
        flag.set_ylabel("P(correction)", fontsize=8)
    changes = [0, *np.flatnonzero(t["instruction"][1:] != t["instruction"][:-1]) + 1]
    for start, end in zip(changes, [*changes[1:], len(t["tick"])], strict=True):
        source = str(t["instruction_source"][start])
        band.axvspan(start, end, color=SOURCE_COLORS.get(source, "0.5"), alpha=0.6)
        band.text(start, 0.03, f" {t['instruction'][start]}", rotation=90, fontsize=7,
                  va="bottom", clip_on=True)  # fmt: skip
    band.set_yticks([])
    band.set_xlabel("tick")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.6) for c in SOURCE_COLORS.values()]
    band.legend(handles, list(SOURCE_COLORS), loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def override_starts(run_log: RunLog) -> list[int]:
    """Rows where an operator override comes into force (a new operator instruction)."""
    source, said = run_log.ticks["instruction_source"], run_log.ticks["instruction"]
    changed = np.r_[True, (source[1:] != source[:-1]) | (said[1:] != said[:-1])]
    return np.flatnonzero((source == "operator") & changed).tolist()


def override_latencies(run_log: RunLog) -> list[int]:
    """Ticks from each operator override (the first tick its instruction is in force) to the
    first executed action of a chunk requested with it: how long the robot takes to act on
    what it was told. An override that ends before any such action counts as not followed
    and is left out.

    A tick's ``chunk`` is the executor's running chunk number, the k-th chunk delivered in
    the episode, so its observation tick is that of the k-th request answered with a chunk.
    """
    t, r = run_log.ticks, run_log.requests
    obs_tick = r["obs_tick"][r["outcome"] == "chunk"]  # (chunks,) in delivery order
    source, said = t["instruction_source"], t["instruction"]
    latencies = []
    for i in override_starts(run_log):
        start = t["tick"][i]
        for j in range(i, len(source)):
            if source[j] != "operator" or said[j] != said[i]:
                break
            k = t["chunk"][j]
            if 0 <= k < len(obs_tick) and obs_tick[k] >= start:
                latencies.append(int(t["tick"][j] - start))
                break
    return latencies
