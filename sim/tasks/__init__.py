"""Task registry: one task per file, each with its scripted expert."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.tasks.base import Expert, Labels, Task
from sim.tasks.pick_place import PickPlace
from sim.tasks.reach import Reach

if TYPE_CHECKING:
    from sim.env import SimEnv

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Reach, PickPlace)}


def make_expert(env: SimEnv, rng: np.random.Generator, failure_prob: float = 0.0) -> Expert:
    """The scripted expert of ``env``'s task for the current episode (call after reset).

    With probability ``failure_prob`` it injects one failure of a random kind and recovers,
    labelling the recovery frames as corrections.
    """
    return env.task.make_expert(env, rng, failure_prob)


__all__ = ["TASKS", "Expert", "Labels", "Task", "make_expert"]
