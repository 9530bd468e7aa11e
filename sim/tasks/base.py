"""The task interface and the scripted-demonstrator machinery shared by all tasks.

A :class:`Task` adds its objects to the scene, randomizes them on reset, names the episode's
language instruction and phases, and detects success from the simulator state.

A :class:`Demonstrator` is a script written as a generator: each ``yield`` is one control tick's
absolute joint targets and labels. Motions are minimum-jerk paths of the grip site (pointing
down, at a given yaw) turned into joint targets by differential IK, so the recorded actions
are smooth. Scripts read the simulator between ticks, so they can notice failures and replan.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import mujoco
import numpy as np

from sim.ik import DiffIK, down_rotation, min_jerk
from sim.robot import GRIPPER_OPEN, NO_CONTACT
from sim.units import to_follower

if TYPE_CHECKING:
    from sim.env import SimEnv

CONTROL_HZ_REF = 30.0  # Task.max_steps is counted in ticks at this rate


COLORS = {"red": (0.85, 0.15, 0.15, 1), "green": (0.2, 0.7, 0.2, 1), "blue": (0.15, 0.3, 0.9, 1)}
"""RGBA of the object colours that instructions name."""


@dataclass(frozen=True)
class Labels:
    """Per-frame hierarchy labels of a demonstration."""

    step_instruction: str  # the current phase, e.g. "grasp the red cube"
    corrective_instruction: str = ""  # e.g. "move left"; "" when no correction applies
    correction: bool = False  # True while the demonstrator recovers from a failure


Step = tuple[np.ndarray, Labels]  # action float32 (6,), labels


class Task(ABC):
    """A language-conditioned manipulation task."""

    name: ClassVar[str]
    max_steps: ClassVar[int]  # episode cap in control ticks at 30 Hz

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Keep the compiled model and its data; subclasses also look up their ids here."""
        self.model, self.data = model, data

    @abstractmethod
    def build(self, spec: mujoco.MjSpec) -> None:
        """Add the task's objects to the scene before it is compiled."""

    @abstractmethod
    def reset(self, rng: np.random.Generator) -> str:
        """Randomize the objects (the robot is already at home); return the instruction."""

    def advance(self, dt: float) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Move the scene's scripted objects ``dt`` seconds on, before each control tick's
        physics (a dynamic task's moving targets); static tasks do nothing."""

    def after_step(self) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Called after each control tick's physics (e.g. to score a time window)."""

    @abstractmethod
    def phases(self) -> tuple[str, ...]:
        """The episode's step instructions, in the order a demonstrator goes through them."""

    @abstractmethod
    def success(self) -> bool:
        """Whether the current simulator state solves the episode's instruction."""

    @abstractmethod
    def outcome(self) -> tuple[float, str | None]:
        """How the episode ended, read from the simulator state: the distance (m) from what
        the task moves to where it must go, and the failure class (None on success), one of
        the task's ``FAILURES``, so run logs can be read for why a policy fails."""

    @abstractmethod
    def environment_state(self) -> np.ndarray:
        """The scene's low-dimensional state, float32 (n,) in ``environment_names`` order.

        lerobot's ``observation.environment_state``: enough for a state-based policy to do the
        task without cameras. Objects come in a fixed order whichever one the instruction
        names, so a policy has to read the instruction to pick the right one. The grip site is
        left out: it follows from ``observation.state`` (``SimEnv(grip_state=True)`` appends it).
        """

    @abstractmethod
    def environment_names(self) -> list[str]:
        """One name per ``environment_state`` element, ``<body>.<quantity>``: "cube_red.x"."""

    @abstractmethod
    def make_demonstrator(
        self, env: SimEnv, rng: np.random.Generator, failure_prob: float
    ) -> Demonstrator:
        """A scripted demonstrator for the current episode (call after ``env.reset``)."""


def add_target_spheres(spec: mujoco.MjSpec, radius: float) -> None:
    """One contact-free mocap sphere per colour, bodies ``target_<colour>``."""
    for color, rgba in COLORS.items():
        body = spec.worldbody.add_body(name=f"target_{color}", mocap=True)
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[radius, 0, 0], rgba=rgba,
            contype=NO_CONTACT, conaffinity=NO_CONTACT,
        )  # fmt: skip


def target_mocap_ids(model: mujoco.MjModel) -> dict[str, int]:
    """Colour -> mocap index of the spheres ``add_target_spheres`` made."""
    return {c: model.body(f"target_{c}").mocapid[0] for c in COLORS}


def sample_apart(
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator], np.ndarray],
    n: int,
    min_distance: float,
    dims: int,
) -> np.ndarray:
    """``n`` draws (n, d) whose first ``dims`` coordinates are ``min_distance`` apart.

    Rejection sampling that starts over when a layout gets stuck.
    """
    while True:
        points: list[np.ndarray] = []
        for _ in range(100 * n):
            p = draw(rng)
            if all(np.linalg.norm(p[:dims] - q[:dims]) >= min_distance for q in points):
                points.append(p)
                if len(points) == n:
                    return np.array(points)


def direction_words(delta: np.ndarray) -> str:
    """Corrective instruction for an error ``delta`` (2,) or (3,) in the robot frame.

    The robot faces +x and its left is +y: (0.03, -0.01) -> "move forward", (0.02, 0.02) ->
    "move forward and left"; an axis is named when its error is over half the largest one.
    A vertical component (index 2) gives "move up" / "move down".
    """
    names = (("back", "forward"), ("right", "left"), ("down", "up"))
    mags = np.abs(delta)
    axes = [i for i in range(len(delta)) if mags[i] > 0.5 * mags.max()]  # in x, y, z order
    return "move " + " and ".join(names[i][int(delta[i] > 0)] for i in axes)


def arm_yaw(pos: np.ndarray, roll: float) -> float:
    """Closing-axis yaw of the down-pointing hand at ``pos`` with wrist_roll ``roll``.

    With the hand pointing down, yaw = pi/2 + shoulder_pan - wrist_roll, and the pan is the
    azimuth of the grip site. Demonstrators keep yaw continuous (not wrapped) so that a turn never
    swings the wrist the long way round.
    """
    return math.pi / 2 + math.atan2(pos[1], pos[0]) - roll


class Demonstrator(ABC):
    """A scripted demonstrator for one episode of ``env``.

    ``act()`` returns the next action and labels; the caller steps the env with the action.
    ``done`` becomes True at the end of the script (a short hold after success), or when the
    env reaches its ``max_steps``; ``failure`` names the failure injected in this episode, if any.
    """

    FAILURES: ClassVar[tuple[str, ...]]  # failure kinds this demonstrator can inject
    SPEED = 0.08  # m/s, mean speed of the grip site along a move
    CORRECTION_SPEED = 0.05  # m/s, the same while correcting: recoveries are deliberate
    YAW_SPEED = 1.2  # rad/s, mean turning speed of the hand and of wrist_roll
    GRIP_SPEED = 0.08  # m/s, mean speed of the finger opening
    MIN_MOVE_S = 0.25  # s, shortest move
    MAX_JOINT_SPEED = 3.0  # rad/s, cap of the commanded joint speed
    HOLD_S = 0.4  # s, stillness at the end so the result is visible

    def __init__(self, env: SimEnv, rng: np.random.Generator, failure_prob: float = 0.0) -> None:
        if not 0.0 <= failure_prob <= 1.0:
            raise ValueError(f"failure_prob={failure_prob} must be in [0, 1]")
        self.env, self.task, self.rng = env, env.task, rng
        self.failure: str | None = None
        if rng.random() < failure_prob:
            self.failure = str(rng.choice(self.FAILURES))
        self._ik = DiffIK(env.model, env.robot)
        qpos = env.data.qpos[env.robot.qpos]
        self._q = qpos[:5].copy()  # (5,) commanded arm joints
        self._grip = float(qpos[5])  # commanded finger opening
        self._pos = self._ik.forward(self._q)[0]  # (3,) commanded grip site position
        self._yaw = arm_yaw(self._pos, self._q[4])  # commanded closing-axis yaw (continuous)
        self._finished = False
        self._last: Step = (self._action(), Labels(self.task.phases()[0]))
        self._steps = self.script()

    @property
    def done(self) -> bool:
        return self._finished or self.env.tick >= self.env.max_steps

    def act(self) -> Step:
        """The next action float32 (6,) and its labels; repeats the last one once done."""
        if not self.done:
            self._last = next(self._steps, self._last)
        return self._last

    @abstractmethod
    def script(self) -> Iterator[Step]:
        """The demonstration, one yield per control tick; ends with ``hold``."""

    # Sensing.

    def site_pos(self) -> np.ndarray:
        """Actual grip site position (3,)."""
        return self.env.data.site_xpos[self.env.robot.grip_site].copy()

    def opening(self) -> float:
        """Actual finger opening (the ``gripper`` joint), in metres."""
        return float(self.env.data.qpos[self.env.robot.qpos[5]])

    # Motion primitives: each yields one Step per tick.

    def ticks(self, seconds: float) -> int:
        return max(1, round(seconds * self.env.control_hz))

    def move(
        self,
        pos: np.ndarray,
        labels: Labels,
        *,
        yaw: float | None = None,
        grip: float | None = None,
    ) -> Iterator[Step]:
        """Minimum-jerk move of the grip site to ``pos`` (3,), hand yaw and finger opening."""
        pos = np.asarray(pos, dtype=float)
        start_pos, start_yaw, start_grip = self._pos.copy(), self._yaw, self._grip
        speed = self.CORRECTION_SPEED if labels.correction else self.SPEED
        yaw = start_yaw if yaw is None else yaw
        grip = start_grip if grip is None else grip
        # wrist_roll = pi/2 + pan - yaw (see arm_yaw): a pan swing turns the wrist as well
        pan_change = math.atan2(pos[1], pos[0]) - math.atan2(start_pos[1], start_pos[0])
        roll_change = pan_change - (yaw - start_yaw)
        seconds = max(
            self.MIN_MOVE_S,
            np.linalg.norm(pos - start_pos) / speed,
            max(abs(yaw - start_yaw), abs(roll_change)) / self.YAW_SPEED,
            abs(grip - start_grip) / self.GRIP_SPEED,
        )
        n = self.ticks(seconds)
        for i in range(1, n + 1):
            s = min_jerk(i / n)
            self._pos = start_pos + s * (pos - start_pos)
            self._yaw = start_yaw + s * (yaw - start_yaw)
            self._grip = start_grip + s * (grip - start_grip)
            yield self._command(labels)

    def wait(self, seconds: float, labels: Labels) -> Iterator[Step]:
        """Keep the current command."""
        for _ in range(self.ticks(seconds)):
            yield self._command(labels)

    def settle(self, labels: Labels, tol: float = 0.004, max_s: float = 0.5) -> Iterator[Step]:
        """Wait until the grip site is within ``tol`` of its target (at most ``max_s``)."""
        for _ in range(self.ticks(max_s)):
            if np.linalg.norm(self.site_pos() - self._pos) < tol:
                return
            yield self._command(labels)

    def open_gripper(self, labels: Labels) -> Iterator[Step]:
        yield from self.move(self._pos, labels, grip=GRIPPER_OPEN)

    def hold(self, labels: Labels) -> Iterator[Step]:
        """Stay still for ``HOLD_S``; the demonstrator is done after the last of these ticks."""
        n = self.ticks(self.HOLD_S)
        for i in range(n):
            self._finished = i == n - 1
            yield self._command(labels)

    def _command(self, labels: Labels) -> Step:
        target = self._ik.solve(self._q, self._pos, down_rotation(self._yaw))  # (5,)
        max_step = self.MAX_JOINT_SPEED / self.env.control_hz
        self._q = self._q + np.clip(target - self._q, -max_step, max_step)
        return self._action(), labels

    def _action(self) -> np.ndarray:
        """The command float32 (6,) in the env's (follower) units."""
        return to_follower(np.r_[self._q, self._grip])
