"""The MuJoCo driver with failure injection for policy rollouts (``sim.disturb.Disturbance``).

Each episode (``reset(seed)``) draws its push from the seed alone, so two runs with the same
seeds push the same episodes at the same ticks whatever policy is in control. The push acts
below the ``SafeDriver``: it is the world moving the arm, not a command the policy sent.
"""

from __future__ import annotations

import numpy as np

from runtime.robot.drivers.base import Observation
from runtime.robot.drivers.mujoco import MujocoDriver
from sim.disturb import Disturbance

DISTURBANCE_STREAM = 0xD157  # rng stream of the pushes, apart from the scene's own draws


class DisturbedMujocoDriver(MujocoDriver):
    """``MujocoDriver`` whose episodes get a push with probability ``failure_prob``.

    ``pushes`` maps the seed of every episode whose failure happened to the tick it began
    (any kind: push, knock or drop), ``kinds`` to its kind.
    """

    def __init__(
        self,
        *,
        failure_prob: float,
        distance: float = 0.04,
        duration_s: float = 0.5,
        window: tuple[float, float] = (0.15, 0.5),
        kinds: tuple[str, ...] = ("push",),
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.disturbance = Disturbance(
            self.env, failure_prob, distance, duration_s, window, kinds=kinds
        )
        self.pushes: dict[int | None, int] = {}
        self.kinds: dict[int | None, str] = {}
        self._seed: int | None = None

    def reset(self, seed: int | None = None) -> Observation:
        obs = super().reset(seed)
        self.disturbance.reset(np.random.default_rng([DISTURBANCE_STREAM, seed or 0]))
        self._seed = seed
        return obs

    def act(self, action: np.ndarray) -> None:
        push = self.disturbance
        command = push(self._limits.check(action))  # a knock or a drop may fire here
        if push.active and self.env.tick == push.onset:
            self.pushes[self._seed], self.kinds[self._seed] = push.onset, push.kind
        self.step_command(command)
