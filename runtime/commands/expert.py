"""``rtvla expert``: success rate of the scripted expert, with and without injected failures."""

from __future__ import annotations

from omegaconf import DictConfig

from sim import evaluate_expert


def main(cfg: DictConfig) -> dict:
    figures = evaluate_expert(
        cfg.task.name,
        episodes=cfg.episodes,
        failure_prob=cfg.failure_prob,
        seed=cfg.seed,
    )
    return {"task": cfg.task.name, "failure_prob": cfg.failure_prob, **figures}
