"""One module per ``rtvla`` subcommand; each exposes ``main(cfg) -> dict`` of figures."""

from __future__ import annotations

from omegaconf import DictConfig

from sim import SimEnv


def make_sim_env(task: DictConfig, render: bool = True) -> SimEnv:
    """The simulator described by a ``task/`` config group entry."""
    return SimEnv(
        task.name,
        image_size=task.image_size,
        control_hz=task.control_hz,
        cameras=tuple(task.cameras),
        render=render,
        action_noise=task.action_noise,
    )
