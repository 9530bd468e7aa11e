"""``rtvla demo``: record demonstrations, replay them in MuJoCo, print a table, write a plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from runtime.commands import make_sim_env
from sim import JOINT_NAMES
from sim.record import record_dataset
from sim.replay import EpisodeReplay, replay_dataset

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_sim_env(cfg.task)
    try:
        summary = record_dataset(
            env, out / "dataset", cfg.episodes, seed=cfg.seed, failure_prob=cfg.failure_prob
        )
    finally:
        env.close()
    replay_env = make_sim_env(cfg.task, render=False)
    try:
        replays = replay_dataset(replay_env, out / "dataset", list(summary.seeds))
    finally:
        replay_env.close()

    figures = {
        "task": cfg.task.name,
        "episodes": summary.episodes,
        "frames": summary.frames,
        "recording_frames_per_s": summary.as_dict()["frames_per_s"],
        "correction_frames": int(sum(r.correction.sum() for r in replays)),
        "replay_success_rate": float(np.mean([r.success for r in replays])),
        "replay_max_state_error": max(r.max_state_error for r in replays),
        "dataset": str(out / "dataset"),
        "plot": str(
            plot_replay(
                max(replays, key=lambda r: r.correction.sum()), JOINT_NAMES, out / "replay.png"
            )
        ),
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print_table(replays)
    return figures


def print_table(replays: list[EpisodeReplay]) -> None:
    table = Table(title="recorded demonstrations, replayed open-loop")
    for column in ("episode", "frames", "correction frames", "replay success", "max |Δstate|"):
        table.add_column(column, justify="right")
    for r in replays:
        table.add_row(
            str(r.episode),
            str(len(r.actions)),
            str(int(r.correction.sum())),
            "yes" if r.success else "no",
            f"{r.max_state_error:.2e}",
        )
    Console(stderr=True).print(table)


def plot_replay(replay: EpisodeReplay, joint_names: tuple[str, ...], path: Path) -> Path:
    """Recorded joint targets against the replayed joint positions, recoveries shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(replay.actions))
    fig, axes = plt.subplots(len(joint_names), 1, figsize=(8, 1.6 * len(joint_names)), sharex=True)
    for j, (ax, name) in enumerate(zip(axes, joint_names, strict=True)):
        ax.plot(t, replay.actions[:, j], "--", lw=1, label="action (target)")
        ax.plot(t, replay.replayed_states[:, j], lw=1, label="replayed state")
        ax.fill_between(
            t,
            0,
            1,
            where=replay.correction,
            transform=ax.get_xaxis_transform(),
            color="tab:red",
            alpha=0.15,
            label="correction",
        )
        ax.set_ylabel(name, fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("control tick")
    fig.suptitle(f"episode {replay.episode}: success={replay.success}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
