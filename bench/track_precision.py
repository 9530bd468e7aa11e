"""Would a stricter tracking radius separate the executors? Rescores a ``track`` or
``track_preview`` sweep's episodes at several radii, offline; prints one JSON line.

Each episode's grip-site position per tick comes from its logged joint states (forward
kinematics), its target's from the episode seed (the task's paths depend on nothing else); an
episode succeeds at radius r when the grip site is within r of the target on at least the
task's share of the scored ticks (those after the grace period), as ``Track.success`` judges it
at its own radius. At the task's radius this reproduces the sweep's count to within an
episode (the log holds the state observed at the start of each tick, which the task scores at
its end, so the last scored tick is not in it; and the task reads the grip site as MuJoCo left it
before the last physics substep, a fraction of a millimetre from where the joints put it).
Needs the per-episode logs a ``jobs`` >= 2 sweep keeps in ``workers/``.

    uv run python bench/track_precision.py outputs/sweep/trackp_full --executors naive,rtc \
        --delays 8 [--radii 0.025,0.02,0.015,0.01]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from runtime.analysis.stats import wilson_interval
from sim.env import SimEnv
from sim.tasks.track import GRACE_S, MIN_ON_TARGET


def distances(env: SimEnv, states: np.ndarray, seed: int) -> np.ndarray:
    """Grip site to target (m) at each scored tick, from the observed joint states (T, 6)."""
    env.reset(seed=seed)
    path, dt = env.task.paths[env.task.color], 1.0 / env.control_hz
    # observation t follows the physics step that scored tick t
    ticks = [t for t in range(len(states)) if t * dt > GRACE_S + 1e-9]
    grip = env.grip_positions(states[ticks])
    targets = np.array([path.position(t * dt) for t in ticks]).reshape(-1, 3)
    return np.linalg.norm(grip - targets, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="an rtvla sweep output folder (jobs >= 2)")
    parser.add_argument("--executors", required=True, help="comma-separated, of the sweep's")
    parser.add_argument("--delays", required=True, help="comma-separated, of the sweep's")
    parser.add_argument("--radii", default="0.025,0.02,0.015,0.01", help="metres")
    args = parser.parse_args()
    workers = args.sweep / "workers"
    if not (workers / "config.yaml").exists():
        parser.error(f"{workers}/config.yaml not found: rescore a sweep run with jobs >= 2")
    cfg = OmegaConf.load(workers / "config.yaml")  # what the sweep wrote for its workers
    task, seed, episodes = cfg["task"]["name"], cfg["seed"], cfg["episodes"]
    if not task.startswith("track"):
        parser.error(f"the sweep ran task={task}: this rescoring is for track tasks")
    radii = [float(r) for r in args.radii.split(",")]
    swept, swept_delays = list(cfg["executors"]), list(cfg["delays"])
    if "rtc_trained" in swept:  # it may skip delays, which shifts the points' numbering
        parser.error("the sweep ran rtc_trained: its points are not numbered executor x delay")
    wanted = [(e, int(d)) for e in args.executors.split(",") for d in args.delays.split(",")]
    if bad := [(e, d) for e, d in wanted if e not in swept or d not in swept_delays]:
        parser.error(f"{bad} not in the sweep (executors {swept}, delays {swept_delays})")
    env = SimEnv(task, render=False)
    table = {}
    try:
        for name, delay in wanted:
            i = swept.index(name) * len(swept_delays) + swept_delays.index(delay)  # Plan order
            on = {r: 0 for r in radii}
            for k in range(episodes):
                log = workers / f"p{i}_e{k}.npz"
                if not log.exists():
                    parser.error(f"{log} is missing: pass points the sweep ran to the end")
                d = distances(env, np.load(log)["ticks.observation.state"], seed + k)
                for r in radii:
                    on[r] += bool(np.mean(d < r) >= MIN_ON_TARGET)
            table[f"{name} d={delay}"] = {f"{r:g}": {"successes": n, "episodes": episodes,
                                        "ci95": [round(b, 4) for b in wilson_interval(n, episodes)]}
                             for r, n in on.items()}  # fmt: skip
    finally:
        env.close()
    print(json.dumps({"task": task, "sweep": str(args.sweep), "success_by_radius_m": table}))


if __name__ == "__main__":
    main()
