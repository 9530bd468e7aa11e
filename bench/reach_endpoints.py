"""Where the episodes of a ``reach`` evaluation end, per failure class; prints one JSON line.

For each episode of an ``rtvla eval`` run folder (``summary.json`` and ``episode_*.npz``) the
grip site's positions come from the logged joint states (forward kinematics), the targets'
from the episode seed. Per failure class (and for the successes): the median final distance
to the named target and to the nearest other one, the median closest approach to the named
target over the episode, and the share of episodes that came within ``--near`` of it at some
tick. A policy that heads for the right target and stops short has a small closest approach
equal to its final distance; one that passes the target and wanders off, or hesitates between
targets, has a closest approach well below its final distance.

    uv run python bench/reach_endpoints.py outputs/eval/RUN [outputs/eval/RUN2 ...] [--near 0.04]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sim.env import SimEnv
from sim.tasks.base import COLORS


def endpoints(run: Path, env: SimEnv, near: float) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("task") != "reach":
        raise SystemExit(f"{run}: task is {summary.get('task')!r}, this reads reach runs only")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for k, episode in enumerate(summary["per_episode"]):
        log = run / f"episode_{k:03d}.npz"
        if not log.is_file():
            raise SystemExit(f"{log} is missing: evaluate again without deleting the run logs")
        env.reset(seed=episode["seed"])
        targets = env.task.environment_state().reshape(len(COLORS), 3)  # COLORS order
        named = list(COLORS).index(env.task.color)
        grip = env.grip_positions(np.load(log)["ticks.observation.state"])
        to_named = np.linalg.norm(grip - targets[named], axis=1)
        to_other = min(np.linalg.norm(grip[-1] - p) for i, p in enumerate(targets) if i != named)
        key = episode["failure"] or "success"
        rows.setdefault(key, []).append((to_named[-1], to_other, to_named.min()))
    classes = {}
    for key, values in sorted(rows.items(), key=lambda kv: -len(kv[1])):
        a = np.array(values)
        classes[key] = {
            "episodes": len(a),
            "final_to_named_cm": round(100 * float(np.median(a[:, 0])), 1),
            "final_to_nearest_other_cm": round(100 * float(np.median(a[:, 1])), 1),
            "closest_to_named_cm": round(100 * float(np.median(a[:, 2])), 1),
            "came_near_share": round(float(np.mean(a[:, 2] < near)), 3),
        }
    return {"run": str(run), "episodes": len(summary["per_episode"]), "classes": classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="rtvla eval output folders (reach)")
    parser.add_argument("--near", type=float, default=0.04, help="m: 'came near' radius")
    args = parser.parse_args()
    env = SimEnv("reach", render=False)
    results = [endpoints(run, env, args.near) for run in args.runs]
    env.close()
    print(json.dumps({"bench": "reach_endpoints", "near_m": args.near, "runs": results}))


if __name__ == "__main__":
    main()
