"""Reach: move the gripper to the target sphere of the named colour.

Three small spheres (red, green, blue) float above the table; one is the target, the other two
are distractors. Success: the grip site within ``SUCCESS_RADIUS`` of the target's centre and
nearly still there (slower than ``SETTLED_SPEED``), so sweeping through the target does not count.
A fast task for tests and state-only policies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from sim.tasks.base import (
    COLORS,
    Demonstrator,
    Labels,
    Step,
    Task,
    add_target_spheres,
    arm_yaw,
    direction_words,
    sample_apart,
    target_mocap_ids,
)

if TYPE_CHECKING:
    from sim.env import SimEnv

RADIUS_RANGE = (0.12, 0.18)  # m, horizontal distance of a target from the base
ANGLE_RANGE = (-0.7, 0.7)  # rad, azimuth of a target (0 = straight ahead)
HEIGHT_RANGE = (0.05, 0.10)  # m, height of a target's centre above the table
MIN_SEPARATION = 0.06  # m, between target centres
SUCCESS_RADIUS = 0.02  # m
FAILURES = ("wrong_target", "not_settled", "imprecise", "far")  # Reach.outcome
SETTLED_SPEED = 0.03  # m/s, the grip site must be slower than this at the target
APPROACH_HEIGHT = 0.04  # m, the demonstrator first moves this far above the target


def draw_target(rng: np.random.Generator) -> np.ndarray:
    """A random target centre (3,) inside the reachable region."""
    r, a = rng.uniform(*RADIUS_RANGE), rng.uniform(*ANGLE_RANGE)
    return np.array([r * np.cos(a), r * np.sin(a), rng.uniform(*HEIGHT_RANGE)])


class Reach(Task):
    name = "reach"
    max_steps = 180

    def build(self, spec: mujoco.MjSpec) -> None:
        add_target_spheres(spec, radius=0.018)

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        self._mocap = target_mocap_ids(model)
        self._site = model.site("grip").id
        self.color = "red"

    def reset(self, rng: np.random.Generator) -> str:
        self.color = str(rng.choice(list(COLORS)))
        targets = sample_apart(rng, draw_target, len(COLORS), MIN_SEPARATION, dims=3)  # (3, 3)
        for color, pos in zip(COLORS, targets, strict=True):
            self.data.mocap_pos[self._mocap[color]] = pos
        return f"move the gripper to the {self.color} target"

    def phases(self) -> tuple[str, ...]:
        return (f"move above the {self.color} target", f"reach the {self.color} target")

    def target_pos(self) -> np.ndarray:
        return self.data.mocap_pos[self._mocap[self.color]].copy()

    def environment_state(self) -> np.ndarray:
        """(9,) the centres of the red, green and blue targets."""
        return np.concatenate(
            [self.data.mocap_pos[self._mocap[c]] for c in COLORS], dtype=np.float32
        )

    def environment_names(self) -> list[str]:
        return [f"target_{color}.{axis}" for color in COLORS for axis in "xyz"]

    def success(self) -> bool:
        error = self.data.site_xpos[self._site] - self.target_pos()
        if np.linalg.norm(error) >= SUCCESS_RADIUS:
            return False
        velocity = np.zeros(6)  # (angular, linear) of the grip site
        mujoco.mj_objectVelocity(
            self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._site, velocity, 0
        )
        return bool(np.linalg.norm(velocity[3:]) < SETTLED_SPEED)

    def outcome(self) -> tuple[float, str | None]:
        """Failure classes: the grip site ended within two radii of another target
        (wrong_target), within
        the success radius but still moving (not_settled), within three radii (imprecise),
        farther (far)."""
        site = self.data.site_xpos[self._site]
        distance = float(np.linalg.norm(site - self.target_pos()))
        if self.success():
            return distance, None
        targets = {c: self.data.mocap_pos[self._mocap[c]] for c in COLORS}
        nearest = min(COLORS, key=lambda c: np.linalg.norm(site - targets[c]))
        if nearest != self.color and np.linalg.norm(site - targets[nearest]) < 2 * SUCCESS_RADIUS:
            return distance, "wrong_target"
        if distance < SUCCESS_RADIUS:
            return distance, "not_settled"
        return distance, "imprecise" if distance < 3 * SUCCESS_RADIUS else "far"

    def make_demonstrator(
        self, env: SimEnv, rng: np.random.Generator, failure_prob: float
    ) -> Demonstrator:
        return ReachDemonstrator(env, rng, failure_prob)


class ReachDemonstrator(Demonstrator):
    """Above the target, down onto it, hold.

    Failures: ``offset`` aims 4 cm to the side of the target, ``overshoot`` goes 2.5 cm too
    low; the demonstrator then notices the error and corrects it ("move left", "move up", ...).
    ``detour`` heads for a distractor of another colour first (``DETOUR_FRACTION`` of the way
    to above it), then turns to the named target: on those frames only the instruction says
    which way to go (the arm's pose points at the wrong target), so a policy trained on them
    cannot fit its actions from the pose alone and must read the colour.
    """

    FAILURES = ("offset", "overshoot", "detour")
    DETOUR_FRACTION = 0.7
    SPEED = 0.06  # m/s, slower than the default: a reach is short
    task: Reach

    def script(self) -> Iterator[Step]:
        above, reach = self.task.phases()
        target = self.task.target_pos()
        miss = self._miss(target)  # (3,)
        lift = np.array([0.0, 0.0, APPROACH_HEIGHT])
        yaw = arm_yaw(target, roll=0.0)
        if self.failure == "detour":
            yield from self._detour(above, lift)
        yield from self.move(target + miss * [1, 1, 0] + lift, Labels(above), yaw=yaw)
        yield from self.move(target + miss, Labels(reach))
        yield from self.settle(Labels(reach))
        if self.failure is not None:
            yield from self.wait(0.3, Labels(reach))
        error = target - self.site_pos()
        if np.linalg.norm(error) > 0.01:
            fix = Labels(reach, direction_words(error), correction=True)
            yield from self.move(target, fix)
            yield from self.settle(fix)
        yield from self.hold(Labels(reach))

    def _detour(self, above: str, lift: np.ndarray) -> Iterator[Step]:
        """Most of the way towards above a random distractor, a pause, then a corrective
        instruction towards above the named target (the caller's next move goes there)."""
        centres = dict(zip(COLORS, self.task.environment_state().reshape(-1, 3), strict=True))
        decoy = centres[str(self.rng.choice([c for c in COLORS if c != self.task.color]))]
        start = self.site_pos()
        waypoint = start + self.DETOUR_FRACTION * (decoy + lift - start)
        yield from self.move(waypoint, Labels(above), yaw=arm_yaw(decoy, roll=0.0))
        yield from self.wait(0.2, Labels(above))
        error = self.task.target_pos() + lift - self.site_pos()
        yield from self.move(
            self.task.target_pos() + lift,
            Labels(above, direction_words(error), correction=True),
            yaw=arm_yaw(self.task.target_pos(), roll=0.0),
        )

    def _miss(self, target: np.ndarray) -> np.ndarray:
        """Where the injected failure aims, relative to the target (zero without one)."""
        if self.failure == "overshoot":
            return np.array([0.0, 0.0, -0.025])
        if self.failure == "offset":
            while True:
                a = self.rng.uniform(-np.pi, np.pi)
                miss = 0.04 * np.array([np.cos(a), np.sin(a), 0.0])
                if 0.1 <= np.linalg.norm((target + miss)[:2]) <= RADIUS_RANGE[1] + 0.01:
                    return miss
        return np.zeros(3)
