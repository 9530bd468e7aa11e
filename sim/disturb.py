"""Failures while a policy is in control: a push that drags the arm off course, and the
scripted demonstrator's recovery from it.

The demonstrators inject their failures inside their own scripts (``sim/tasks/``), which needs the
demonstrator in control. When a learned policy drives the arm, a failure has to come from outside:
a ``Disturbance`` takes over the arm's commands at a random tick and drags the grip site
``distance`` metres in a random horizontal direction along a minimum-jerk path for
``duration_s`` (a bump, or a hand pulling the arm aside), holding the policy's gripper
command; afterwards the policy's commands apply again, from wherever the arm was left.

``Recovery`` is what the task's scripted demonstrator does about it: move back to where the push
began, labelled as a correction with direction words ("move left", "move back and up"), then
run its own script from there (it replans from the objects' current poses).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from sim.ik import DiffIK, min_jerk
from sim.tasks import Labels, make_demonstrator
from sim.tasks.base import Step, direction_words

if TYPE_CHECKING:
    from sim.env import SimEnv

MIN_RADIUS, MAX_RADIUS = 0.08, 0.24  # m, a push never leaves this ring around the base


class Disturbance:
    """A push of the arm at a random tick of some episodes; call it on every action.

    ``probability``: per-episode chance of a push; ``window``: earliest and latest onset as
    fractions of the episode's ``max_steps``. ``origin`` is where the grip site was when the
    push began (None before it).
    """

    def __init__(
        self,
        env: SimEnv,
        probability: float,
        distance: float = 0.04,
        duration_s: float = 0.5,
        window: tuple[float, float] = (0.15, 0.5),
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"failure_prob={probability} must be a probability in [0, 1]")
        if not 0.0 <= window[0] <= window[1] <= 1.0:
            raise ValueError(f"disturbance.window={list(window)} must be 0 <= start <= end <= 1")
        if distance <= 0 or duration_s <= 0:
            raise ValueError("disturbance.distance and disturbance.duration_s must be > 0")
        self.env, self.probability, self.distance, self.window = env, probability, distance, window
        self.ticks = max(1, round(duration_s * env.control_hz))
        self._ik = DiffIK(env.model, env.robot)
        self.onset: int | None = None
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        """Decide this episode's push (call after ``env.reset``): whether, when, which way."""
        self.onset = None
        self.origin: np.ndarray | None = None
        self._angle = rng.uniform(-np.pi, np.pi)
        if rng.random() < self.probability:
            lo, hi = (round(f * self.env.max_steps) for f in self.window)
            self.onset = int(rng.integers(lo, hi + 1))

    @property
    def active(self) -> bool:
        """Whether the push has the arm at the current tick."""
        return self.onset is not None and 0 <= self.env.tick - self.onset < self.ticks

    @property
    def finished(self) -> bool:
        """Whether this episode's push has happened and let go of the arm."""
        return self.onset is not None and self.env.tick >= self.onset + self.ticks

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """The command (6,) that reaches the arm at the current tick instead of ``action``."""
        if not self.active:
            return action
        if self.env.tick == self.onset:
            self._start()
        s = min_jerk((self.env.tick - self.onset + 1) / self.ticks)
        self._q = self._ik.solve(self._q, self.origin + s * self._push, self._rot)
        return np.r_[self._q, action[5]].astype(np.float32)

    def _start(self) -> None:
        self._q = self.env.data.qpos[self.env.robot.qpos[:5]].copy()  # (5,) actual joints
        self.origin, self._rot = self._ik.forward(self._q)
        push = self.distance * np.array([np.cos(self._angle), np.sin(self._angle), 0.0])
        if not MIN_RADIUS <= np.linalg.norm((self.origin + push)[:2]) <= MAX_RADIUS:
            push = -push  # towards the workspace rather than out of it
        self._push = push


class Recovery:
    """The task's scripted demonstrator taking over a disturbed episode: back to ``origin`` (a
    correction), then its own script to the end.

    The takeover starts a new episode as far as recording goes, so the env's tick count
    restarts at 0 and the demonstrator gets the task's full ``max_steps``.
    """

    def __init__(self, env: SimEnv, rng: np.random.Generator, origin: np.ndarray) -> None:
        env.tick = 0
        self.demonstrator = make_demonstrator(env, rng, failure_prob=0.0)
        self.error = np.asarray(origin) - self.demonstrator.site_pos()  # (3,)
        self._steps = self._script(np.asarray(origin))

    def _script(self, origin: np.ndarray) -> Iterator[Step]:
        demonstrator = self.demonstrator
        step = demonstrator.task.phases()[
            0
        ]  # the demonstrator's script starts over from its first phase
        fix = Labels(step, direction_words(self.error), correction=True)
        yield from demonstrator.move(origin, fix)
        yield from demonstrator.settle(fix)
        while not demonstrator.done:
            yield demonstrator.act()

    def act(self) -> Step | None:
        """The next action and labels, None once the demonstrator is done."""
        return next(self._steps, None)
