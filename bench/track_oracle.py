"""How well could any policy track with delay? Track's scripted demonstrator, aiming where it
extrapolates the target to be from a delayed, chunked view of it; prints one JSON line.

The demonstrator normally aims at the target's true position 0.1 s ahead (it knows the path).
Here it plans as an asynchronous executor's chunks are planned: the action for tick t comes from
a chunk whose observation is o = the last multiple of s at or before t - d (s = max(d, s_min),
naive switching at index d), so it aims at the target as seen at tick o, extrapolated
(t - o + 1) ticks + 0.1 s ahead:

- ``exact``: the true path (a world whose future is in the observation);
- ``linear``: position + velocity * h, from what ``observation.environment_state`` holds
  (each target's position and velocity), i.e. the best a policy reading it can do without
  learning the path's curvature;
- ``quadratic``: with the acceleration as well (not in the observation);
- ``preview``: linear interpolation between the target's position now and 0.2, 0.4 and 0.6 s
  ahead, what ``track_preview``'s scene state holds (extrapolated along the last segment past
  0.6 s).

Success is the task's own (on the target for 90 % of the scored ticks). Held-out seeds, the same
for every view and delay; 95 % Wilson intervals.

    uv run python bench/track_oracle.py [--episodes 50] [--seed 1000] [--delays 0,2,4,6,8]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tqdm import tqdm

from runtime.analysis.stats import wilson_interval
from sim.env import SimEnv
from sim.tasks.track import TrackDemonstrator, TrackPreview

VIEWS = ("exact", "linear", "quadratic", "preview")


class DelayedTrackDemonstrator(TrackDemonstrator):
    """The track demonstrator with its aim planned from chunk observations d ticks old."""

    def __init__(self, env: SimEnv, rng, view: str, delay: int, s: int) -> None:
        if view not in VIEWS:
            raise ValueError(f"view={view!r}: choose one of {VIEWS}")
        super().__init__(env, rng, failure_prob=0.0)
        self.view, self.d, self.s = view, delay, s

    def observed_tick(self, tick: int) -> int:
        """The observation tick of the chunk whose action runs at ``tick``."""
        return 0 if tick < self.d else (tick - self.d) // self.s * self.s

    def _lead_point(self, offset: np.ndarray) -> np.ndarray:
        dt = 1.0 / self.env.control_hz
        o = self.observed_tick(self.env.tick)
        seen = o * dt
        h = (self.env.tick - o) * dt + dt + self.LEAD_S  # how far ahead of what was seen
        path = self.task.paths[self.task.color]
        if self.view == "exact":
            return path.position(seen + h) + offset
        if self.view == "preview":
            ahead = (0.0, *TrackPreview.PREVIEW_S)
            points = np.array([path.position(seen + a) for a in ahead])  # (P, 3)
            i = min(np.searchsorted(ahead, h, side="right"), len(ahead) - 1)  # segment's end
            w = (h - ahead[i - 1]) / (ahead[i] - ahead[i - 1])
            return points[i - 1] + w * (points[i] - points[i - 1]) + offset
        aim = path.position(seen) + path.velocity(seen) * h
        if self.view == "quadratic":
            aim = aim + 0.5 * path.acceleration(seen) * h * h
        return aim + offset


def success_rate(view: str, delay: int, seeds: range, s_min: int, bar=None) -> dict:
    env = SimEnv("track", render=False)
    s = max(delay, s_min)
    successes = 0
    try:
        for seed in seeds:
            env.reset(seed=seed)
            rng = np.random.default_rng((seed, 0))
            demonstrator = DelayedTrackDemonstrator(env, rng, view, delay, s)
            while not demonstrator.done:
                env.step(demonstrator.act()[0])
            successes += env.success()
            if bar is not None:
                bar.update()
    finally:
        env.close()
    n = len(seeds)
    lo, hi = wilson_interval(successes, n)
    return {"success": successes / n, "ci95": [round(lo, 4), round(hi, 4)], "episodes": n,
            "successes": successes, "s": s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1000, help="first seed (held out)")
    parser.add_argument("--delays", default="0,2,4,6,8", help="inference delays in ticks")
    parser.add_argument("--s-min", type=int, default=5, help="smallest execution horizon")
    parser.add_argument("--views", default=",".join(VIEWS), help=f"of {VIEWS}")
    args = parser.parse_args()
    delays = [int(d) for d in args.delays.split(",")]
    views = args.views.split(",")
    if bad := [v for v in views if v not in VIEWS]:
        parser.error(f"--views {bad}: choose from {VIEWS}")
    if any(d < 0 for d in delays) or args.episodes < 1 or args.s_min < 1:
        parser.error("delays must be >= 0, --episodes and --s-min >= 1")
    seeds = range(args.seed, args.seed + args.episodes)
    start = time.perf_counter()
    table: dict[str, dict[str, dict]] = {}
    with tqdm(total=len(views) * len(delays) * len(seeds), desc="track oracle", unit="ep") as bar:
        for view in views:
            for d in delays:
                table.setdefault(view, {})[str(d)] = success_rate(view, d, seeds, args.s_min, bar)
    print(json.dumps({
        "task": "track", "seeds": [seeds.start, seeds.stop - 1], "s_min": args.s_min,
        "success_vs_delay": table, "wall_s": round(time.perf_counter() - start, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
