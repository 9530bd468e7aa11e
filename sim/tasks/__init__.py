"""Task registry: one task per file, each with its scripted demonstrator."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.tasks.base import Demonstrator, Labels, Task
from sim.tasks.conveyor import Conveyor
from sim.tasks.pick_place import PickPlace
from sim.tasks.reach import Reach
from sim.tasks.track import Track, TrackPreview

if TYPE_CHECKING:
    from sim.env import SimEnv

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (Reach, PickPlace, Track, TrackPreview, Conveyor)
}


def make_demonstrator(
    env: SimEnv, rng: np.random.Generator, failure_prob: float = 0.0
) -> Demonstrator:
    """The scripted demonstrator of ``env``'s task for the current episode (call after reset).

    With probability ``failure_prob`` it injects one failure of a random kind and recovers,
    labelling the recovery frames as corrections.
    """
    return env.task.make_demonstrator(env, rng, failure_prob)


__all__ = ["TASKS", "Demonstrator", "Labels", "Task", "make_demonstrator"]
