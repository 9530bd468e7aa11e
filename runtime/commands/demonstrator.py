"""``rtvla demonstrator``: success rate of the scripted demonstrator, with and without
injected failures."""

from __future__ import annotations

from omegaconf import DictConfig

from sim import evaluate_demonstrator


def main(cfg: DictConfig) -> dict:
    figures = evaluate_demonstrator(
        cfg.task.name,
        episodes=cfg.episodes,
        failure_prob=cfg.failure_prob,
        seed=cfg.seed,
        action_noise=cfg.task.action_noise,
    )
    return {"task": cfg.task.name, "failure_prob": cfg.failure_prob, **figures}
