"""Simulator speed: physics steps/s, control ticks/s, render frames/s per camera, and
recording frames/s (demonstrator + both cameras + LeRobotDataset writing, end to end).

Prints one line of JSON. One function per measurement; each builds its own environment.

    uv run python bench/sim_speed.py [--task pick_place] [--image-size 96] [--frames 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import sim  # first: picks the OpenGL backend before mujoco loads

# isort: split
import mujoco
import numpy as np

from sim import SimEnv, make_demonstrator
from sim.render import CameraRenderer, gl_backend


def run_demonstrator(env: SimEnv, ticks: int, seed: int = 0) -> list[float]:
    """Step ``env`` with its demonstrator for ``ticks`` ticks (new episodes as needed).

    Returns the wall time of each ``env.step`` call, in seconds.
    """
    times: list[float] = []
    episode = 0
    while len(times) < ticks:
        env.reset(seed=seed + episode)
        demonstrator = make_demonstrator(env, np.random.default_rng(seed + episode))
        while not demonstrator.done and len(times) < ticks:
            action, _ = demonstrator.act()
            start = time.perf_counter()
            env.step(action)
            times.append(time.perf_counter() - start)
        episode += 1
    return times


def physics_steps_per_s(task: str, steps: int = 20_000) -> float:
    """Raw ``mj_step`` throughput from a mid-episode state (the arm moving, objects resting)."""
    env = SimEnv(task, render=False)
    run_demonstrator(env, ticks=30)
    start = time.perf_counter()
    mujoco.mj_step(env.model, env.data, nstep=steps)
    return steps / (time.perf_counter() - start)


def control_ticks_per_s(task: str, ticks: int = 600) -> float:
    """``env.step`` calls per second without rendering, driven by the demonstrator."""
    times = run_demonstrator(SimEnv(task, render=False), ticks)
    return len(times) / sum(times)


def render_fps(task: str, image_size: int, frames: int) -> dict[str, float]:
    """Frames per second of each camera (1 / median frame time) along a demonstrator episode."""
    env = SimEnv(task, render=False)
    renderer = CameraRenderer(env.model, image_size)
    times: dict[str, list[float]] = {cam: [] for cam in env.cameras}
    episode, demonstrator = -1, None
    for _ in range(frames):
        if demonstrator is None or demonstrator.done:
            episode += 1
            env.reset(seed=episode)
            demonstrator = make_demonstrator(env, np.random.default_rng(episode))
        env.step(demonstrator.act()[0])
        for cam in env.cameras:
            start = time.perf_counter()
            renderer.render(env.data, cam)
            times[cam].append(time.perf_counter() - start)
    renderer.close()
    return {cam: 1.0 / statistics.median(t) for cam, t in times.items()}


def recording_fps(task: str, image_size: int, episodes: int) -> float:
    """Frames per second of ``sim.record.record_dataset`` into a temporary folder."""
    import tempfile
    from pathlib import Path

    from sim.record import record_dataset

    env = SimEnv(task, image_size=image_size)
    with tempfile.TemporaryDirectory() as tmp:
        summary = record_dataset(env, Path(tmp) / "ds", episodes, progress=False)
    env.close()
    return summary.frames / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pick_place", choices=sorted(sim.TASKS))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--frames", type=int, default=300, help="frames per camera")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to record")
    args = parser.parse_args()
    result = {
        "task": args.task,
        "image_size": args.image_size,
        "gl_backend": gl_backend(),
        "n_substeps": SimEnv(args.task, render=False).n_substeps,
        "physics_steps_per_s": round(physics_steps_per_s(args.task)),
        "control_ticks_per_s": round(control_ticks_per_s(args.task), 1),
        "render_fps": {
            cam: round(fps, 1)
            for cam, fps in render_fps(args.task, args.image_size, args.frames).items()
        },
        "recording_frames_per_s": round(
            recording_fps(args.task, args.image_size, args.episodes), 1
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
