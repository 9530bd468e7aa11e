"""``rtvla record``: scripted demonstrations into a LeRobotDataset v3."""

from __future__ import annotations

from omegaconf import DictConfig

from runtime.commands import make_sim_env
from sim.record import record_dataset


def main(cfg: DictConfig) -> dict:
    env = make_sim_env(cfg.task, render=cfg.render)
    try:
        summary = record_dataset(
            env,
            cfg.output,
            cfg.episodes,
            seed=cfg.seed,
            failure_prob=cfg.failure_prob,
            repo_id=cfg.repo_id,
            video=cfg.video,
            extras=cfg.extras,
            max_attempts=cfg.max_attempts,
        )
    finally:
        env.close()
    return {"task": cfg.task.name, **summary.as_dict()}
