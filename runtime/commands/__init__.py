"""One module per ``rtvla`` subcommand; each exposes ``main(cfg) -> dict`` of figures."""

from __future__ import annotations

from omegaconf import DictConfig

from sim import SimEnv


class CommandFailed(RuntimeError):
    """A command ran but did not do its job (e.g. no request of a run was answered): the
    command line prints the figures it has, then this message, and exits 1."""

    def __init__(self, message: str, figures: dict) -> None:
        super().__init__(message)
        self.figures = figures


def make_sim_env(task: DictConfig, render: bool = True) -> SimEnv:
    """The simulator described by a ``task/`` config group entry."""
    return SimEnv(
        task.name,
        image_size=task.image_size,
        control_hz=task.control_hz,
        cameras=tuple(task.cameras),
        render=render,
        action_noise=task.action_noise,
        grip_state=task.grip_state,
    )
