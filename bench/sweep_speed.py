"""Sweep speed: episodes per second of ``rtvla sweep`` with a point's episodes run one by one
(``batch_episodes=1``, the baseline) and side by side with their requests batched
(``batch_episodes=N``), in the same process, on the same points and seeds; and how many
episodes ended alike in both.

Prints one line of JSON. Both runs use ``jobs=1`` (one process, this machine's torch threads),
so the ratio is the batching alone; a grid with ``jobs=2`` gets it on each core.

    uv run python bench/sweep_speed.py --checkpoint outputs/train/conv_n03_14k --task conveyor \\
        [--executors naive,rtc,bid] [--delay 4] [--episodes 16] [--batch 16]

Without ``--checkpoint`` it sweeps the analytic synthetic policy (cheap to evaluate, so the
ratio there is mostly the simulator's share).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import sim  # noqa: F401  first: picks the OpenGL backend before mujoco loads


def sweep(overrides: list[str]) -> tuple[float, dict]:
    """Run one sweep; (wall seconds of its episodes and figures, its sweep.json)."""
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.sweep import main

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=overrides)
    start = time.perf_counter()
    main(cfg)
    wall = time.perf_counter() - start
    return wall, json.loads((Path(cfg.output_dir) / "sweep.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a state policy run (default: the synthetic one)")
    parser.add_argument("--task", default="conveyor")
    parser.add_argument("--executors", default="naive,rtc,bid")
    parser.add_argument("--delay", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16, help="batch_episodes of the batched run")
    args = parser.parse_args()

    policy = [f"checkpoint={args.checkpoint}"] if args.checkpoint else ["server=local:synthetic"]
    executors = args.executors.split(",")
    horizons = [f"executor_params.{e}.execution_horizon=5" for e in executors if e in
                ("naive", "rtc", "rtc_hard", "bid", "rtc_trained")]  # fmt: skip
    common = [
        *policy, f"task={args.task}", "driver.render=false", "horizons=[]",
        f"executors=[{','.join(executors)}]", f"delays=[{args.delay}]",
        f"seam_delay={args.delay}", f"episodes={args.episodes}", "jobs=1", *horizons,
    ]  # fmt: skip
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = ["episodes=1", "max_ticks=2", f"output_dir={tmp}/warm_up"]
        sweep([*common, *warm])  # imports, first loads and plots: not in either timing
        # batched first: whatever warm-up is left favours the baseline
        for name, batch in (("batched", args.batch), ("one_by_one", 1)):
            out = f"output_dir={tmp}/{name}"
            wall, saved = sweep([*common, f"batch_episodes={batch}", out])
            runs[name] = (wall, saved["success_vs_delay"])
    episodes = args.episodes * len(executors)
    result = {
        "bench": "sweep_speed",
        "checkpoint": args.checkpoint or "synthetic",
        "task": args.task,
        "executors": executors,
        "delay": args.delay,
        "episodes": episodes,
        "batch_episodes": args.batch,
    }
    for name, (wall, _) in runs.items():
        result[name] = {"wall_s": round(wall, 2), "episodes_per_s": round(episodes / wall, 3)}
    result["speedup"] = round(runs["one_by_one"][0] / runs["batched"][0], 2)
    alike = 0
    for e in executors:
        a, b = (runs[n][1][e][str(args.delay)]["episode_success"] for n in runs)
        alike += sum(x == y for x, y in zip(a, b, strict=True))
    result["same_outcome"] = f"{alike}/{episodes}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
