"""``rtvla record``: scripted demonstrations into a LeRobotDataset v3."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from runtime.commands import make_sim_env
from sim.record import record_dataset

log = logging.getLogger(__name__)
EVAL_SEED = 1000  # the default first evaluation seed (configs/eval.yaml, sweep.yaml)


def main(cfg: DictConfig) -> dict:
    last = cfg.seed + cfg.episodes - 1
    if cfg.seed <= EVAL_SEED <= last:
        log.warning(
            "seeds %d..%d include the default evaluation seeds (%d onwards): evaluate policies "
            "trained on this dataset with seed=%d or higher, or their scores are on training "
            "scenes", cfg.seed, last, EVAL_SEED, 10 ** len(str(last)),
        )  # fmt: skip
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
