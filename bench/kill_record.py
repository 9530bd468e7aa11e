"""kill -9 of ``rtvla record`` at three moments, and what the next run keeps; prints one JSON line.

Each trial starts ``rtvla record task=TASK render=false episodes=N`` into a fresh folder,
sends SIGKILL at one moment, counts the finished episodes left in ``<output>.partial`` (each
must load as a LeRobotDataset), then runs the same command again to the end and reports how
many episodes it recorded itself and how many the final dataset holds:

- ``mid_first_episode``: once the recording's settings are written and before any episode
  has finished (nothing can be kept);
- ``between_episodes``: as soon as episode 2 of N is on disk (episode 3 in progress);
- ``finalising``: as soon as the merge of the finished episodes has started.

    uv run python bench/kill_record.py [--task reach] [--episodes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(out: Path, task: str, episodes: int) -> list[str]:
    return [sys.executable, "-m", "runtime.commands.cli", "record", f"task={task}",
            "render=false", f"episodes={episodes}", f"output={out}",
            f"hydra.run.dir={out.parent / 'hydra'}"]  # fmt: skip


def wait_for(path_check, proc: subprocess.Popen, timeout_s: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path_check():
            return True
        time.sleep(0.005)
    return False


def loadable_episodes(partial: Path) -> int:
    from lerobot.datasets import LeRobotDataset

    kept = 0
    for folder in sorted((partial / "episodes").glob("episode_*")):
        if folder.suffix == ".tmp":
            continue
        kept += LeRobotDataset("ep", root=folder, video_backend="pyav").num_episodes
    return kept


def trial(moment: str, task: str, episodes: int, root: Path) -> dict:
    from lerobot.datasets import LeRobotDataset

    out = root / moment / "ds"
    out.parent.mkdir(parents=True)
    partial = out.with_name("ds.partial")
    episode_dir = partial / "episodes"
    checks = {
        "mid_first_episode": lambda: (partial / "recording.json").exists(),
        "between_episodes": lambda: (episode_dir / "episode_000001").exists(),
        "finalising": lambda: (partial / "merged").exists(),
    }
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(record(out, task, episodes), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    hit = wait_for(checks[moment], proc)
    if moment == "mid_first_episode":
        time.sleep(0.2)  # into the first episode
    finished_before_kill = proc.poll() is not None
    if not finished_before_kill:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = loadable_episodes(partial) if partial.exists() else 0
    complete_after_kill = out.exists()
    started = time.perf_counter()
    rerun = subprocess.run(record(out, task, episodes), cwd=ROOT, env=env,
                           capture_output=True, text=True)  # fmt: skip
    final = LeRobotDataset("ds", root=out, video_backend="pyav").num_episodes if out.exists() else 0
    return {
        "moment": moment,
        "moment_reached": hit and not finished_before_kill,
        "episodes_kept_after_kill": kept,
        "dataset_complete_after_kill": complete_after_kill,
        "rerun_exit": rerun.returncode,
        "rerun_recorded": final - kept,
        "rerun_s": round(time.perf_counter() - started, 1),
        "final_episodes": final,
        "partial_left": partial.exists(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reach")
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    if args.episodes < 3:
        parser.error("--episodes must be at least 3 (a kill between episodes 2 and 3)")
    with tempfile.TemporaryDirectory(prefix="kill_record_") as tmp:
        trials = [
            trial(m, args.task, args.episodes, Path(tmp))
            for m in ("mid_first_episode", "between_episodes", "finalising")
        ]
    lost = [args.episodes - t["final_episodes"] for t in trials]
    print(json.dumps({"task": args.task, "episodes": args.episodes, "trials": trials,
                      "at_most_one_episode_lost_per_kill": all(
                          t["episodes_kept_after_kill"] >= m for t, m in
                          zip(trials, (0, 2, args.episodes), strict=True)),
                      "episodes_missing_after_rerun": lost}))  # fmt: skip


if __name__ == "__main__":
    main()
