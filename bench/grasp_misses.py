"""Missed grasps in pick_place evaluations, from their run logs; prints one JSON line.

A missed grasp is the gripper closing to under ``--closed`` degrees (on nothing: closed on a
cube it stops near 30) after it was open wider than ``--open``. Reads each run's
``summary.json`` and ``episode_NNN.npz`` (``rtvla eval`` / ``rtvla run``, ``output_dir=``);
``DIR1,DIR2`` pools several runs of one variant.

    uv run python bench/grasp_misses.py outputs/eval/A outputs/eval/B1,outputs/eval/B2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GRIPPER = 5  # the gripper's index in observation.state (degrees)


def misses(gripper: np.ndarray, closed: float, opened: float) -> int:
    """Closings to under ``closed`` that follow an opening past ``opened``."""
    count, was_open = 0, False
    for value in gripper:
        if value > opened:
            was_open = True
        elif value < closed and was_open:
            count, was_open = count + 1, False
    return count


def run(dirs: list[Path], closed: float, opened: float) -> dict:
    episodes = missed = failed_with = 0
    for folder in dirs:
        summary = folder / "summary.json"
        if not summary.is_file():
            raise SystemExit(f"{summary} does not exist: pass the output_dir= of `rtvla eval`")
        for i, episode in enumerate(json.loads(summary.read_text())["per_episode"]):
            log = folder / f"episode_{i:03d}.npz"
            if not log.is_file():
                raise SystemExit(f"{log} does not exist: the run folder is incomplete")
            with np.load(log) as z:
                n = misses(z["ticks.observation.state"][:, GRIPPER], closed, opened)
            episodes, missed = episodes + 1, missed + n
            failed_with += n > 0 and not episode["success"]
    return {"episodes": episodes, "missed_grasps": missed,
            "missed_per_episode": round(missed / max(episodes, 1), 3),
            "failed_episodes_with_a_miss": failed_with}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders; DIR1,DIR2 pools runs")
    parser.add_argument("--closed", type=float, default=3.0, help="degrees: closed on nothing")
    parser.add_argument("--open", type=float, default=20.0, help="degrees: open again")
    args = parser.parse_args()
    out = {"bench": "grasp_misses", "closed_deg": args.closed, "open_deg": args.open}
    for spec in args.runs:
        dirs = [Path(d) for d in spec.split(",")]
        out[str(dirs[0])] = run(dirs, args.closed, args.open)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
