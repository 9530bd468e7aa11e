"""Track: keep the gripper on the named coloured target while it moves.

Three spheres (red, green, blue) glide along smooth random closed paths (Lissajous curves) at
random speeds; the instruction names one. Success is judged over a time window, not at one
instant: after a grace period to catch up (``GRACE_S``), the grip site must be within
``TRACK_RADIUS`` of the target on at least ``MIN_ON_TARGET`` of the control ticks until the
episode ends (``DURATION_S``). The world does not wait for the robot, so a controller that
pauses to think, or whose chunks jump at their seams, falls behind: this task is what makes
inference delay measurable.

``observation.environment_state`` holds every target's position and velocity, so a policy
can lead a target by its inference delay; over longer delays its path curves away from that
extrapolation (``bench/track_oracle.py`` measures by how much). ``track_preview``
(``TrackPreview``) also shows where each target will be ``PREVIEW_S`` ahead, so that the world's
future is in the observation, as in a fully observed simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
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
    target_mocap_ids,
)

if TYPE_CHECKING:
    from sim.env import SimEnv

DURATION_S = 8.0  # s, episode length: success is decided at its end
GRACE_S = 2.5  # s, time to reach the target before tracking is scored
TRACK_RADIUS = 0.025  # m, the grip site counts as on the target within this distance
MIN_ON_TARGET = 0.9  # fraction of the scored ticks that must be on the target
SPEED_RANGE = (0.04, 0.09)  # m/s, mean speed of a target along its path
CENTER_RADIUS = (0.13, 0.17)  # m, horizontal distance of a path's centre from the base
CENTER_ANGLE = (-0.5, 0.5)  # rad, azimuth of a path's centre
AMPLITUDE = (0.025, 0.045)  # m, half-extent of a path along each horizontal axis
HEIGHT = (0.05, 0.09)  # m, mean height of a target above the table
HEIGHT_SWING = 0.015  # m, vertical half-extent of a path
FAILURES = ("off_target", "lagging", "far")  # Track.outcome


@dataclass(frozen=True)
class Path:
    """p(t) = centre + (ax sin(w t + a), ay sin(r w t + b), az sin(w t / 2 + c))."""

    centre: np.ndarray  # (3,)
    amplitude: np.ndarray  # (3,)
    omega: float  # rad/s
    ratio: float  # y frequency / x frequency
    phase: np.ndarray  # (3,)

    @cached_property
    def _freq(self) -> np.ndarray:  # computed once: the positions are read every tick
        return self.omega * np.array([1.0, self.ratio, 0.5])

    def position(self, t: float) -> np.ndarray:
        return self.centre + self.amplitude * np.sin(self._freq * t + self.phase)

    def velocity(self, t: float) -> np.ndarray:
        f = self._freq
        return self.amplitude * f * np.cos(f * t + self.phase)

    def acceleration(self, t: float) -> np.ndarray:
        f = self._freq
        return -self.amplitude * f**2 * np.sin(f * t + self.phase)


def draw_path(rng: np.random.Generator) -> Path:
    """A random path whose mean speed lies in SPEED_RANGE."""
    r, a = rng.uniform(*CENTER_RADIUS), rng.uniform(*CENTER_ANGLE)
    centre = np.array([r * np.cos(a), r * np.sin(a), rng.uniform(*HEIGHT)])
    amplitude = np.array([rng.uniform(*AMPLITUDE), rng.uniform(*AMPLITUDE), HEIGHT_SWING])
    ratio = rng.uniform(0.6, 1.4)
    phase = rng.uniform(-np.pi, np.pi, size=3)
    unit = Path(centre, amplitude, 1.0, ratio, phase)  # mean speed scales linearly with omega
    times = np.linspace(0.0, 4 * np.pi, 200)
    unit_speed = float(np.mean([np.linalg.norm(unit.velocity(t)) for t in times]))
    omega = rng.uniform(*SPEED_RANGE) / unit_speed
    return Path(centre, amplitude, omega, ratio, phase)


class Track(Task):
    name = "track"
    max_steps = round(DURATION_S * 30)
    PREVIEW_S: tuple[float, ...] = ()  # s ahead: each target's position then, in the scene state

    def build(self, spec: mujoco.MjSpec) -> None:
        add_target_spheres(spec, radius=0.015)

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        self._mocap = target_mocap_ids(model)
        self._site = model.site("grip").id
        self.color = "red"
        self.paths: dict[str, Path] = {}
        self.time = 0.0
        self._scored = self._on_target = 0

    def reset(self, rng: np.random.Generator) -> str:
        self.color = str(rng.choice(list(COLORS)))
        self.paths = {c: draw_path(rng) for c in COLORS}
        self.time = 0.0
        self._scored = self._on_target = 0
        self._place()
        return f"follow the {self.color} target"

    def advance(self, dt: float) -> None:
        """Move the targets ``dt`` seconds on (before the physics step) and score the tick."""
        self.time += dt
        self._place()

    def after_step(self) -> None:
        if self.time > GRACE_S + 1e-9:
            self._scored += 1
            self._on_target += self.distance() < TRACK_RADIUS

    def _place(self) -> None:
        for color, path in self.paths.items():
            self.data.mocap_pos[self._mocap[color]] = path.position(self.time)

    def phases(self) -> tuple[str, ...]:
        return (f"reach the {self.color} target", f"follow the {self.color} target")

    def target_pos(self, t: float | None = None) -> np.ndarray:
        return self.paths[self.color].position(self.time if t is None else t)

    def distance(self) -> float:
        return float(np.linalg.norm(self.data.site_xpos[self._site] - self.target_pos()))

    def on_target_fraction(self) -> float:
        """Fraction of the scored ticks so far with the grip site on the target (0 before)."""
        return self._on_target / self._scored if self._scored else 0.0

    def environment_state(self) -> np.ndarray:
        """(18,) position and velocity of the red, green and blue targets; with ``PREVIEW_S``,
        each target's position that far ahead after its velocity."""
        t, parts = self.time, []
        for path in (self.paths[c] for c in COLORS):
            parts += [path.position(t), path.velocity(t)]
            parts += [path.position(t + ahead) for ahead in self.PREVIEW_S]
        return np.concatenate(parts, dtype=np.float32)

    def environment_names(self) -> list[str]:
        names = []
        for color in COLORS:
            names += [f"target_{color}.{q}{axis}" for q in ("", "v") for axis in "xyz"]
            names += [f"target_{color}.{axis}_in_{ahead:g}s" for ahead in self.PREVIEW_S
                      for axis in "xyz"]  # fmt: skip
        return names

    def success(self) -> bool:
        finished = self.time >= DURATION_S - 1e-6
        return finished and self.on_target_fraction() >= MIN_ON_TARGET

    def outcome(self) -> tuple[float, str | None]:
        """Failure classes: on the target most of the time but under MIN_ON_TARGET
        (off_target: at least half), near it but mostly outside the radius (lagging: within
        three radii at the end), farther (far)."""
        distance = self.distance()
        if self.success():
            return distance, None
        if self.on_target_fraction() >= 0.5:
            return distance, "off_target"
        return distance, "lagging" if distance < 3 * TRACK_RADIUS else "far"

    def make_demonstrator(
        self, env: SimEnv, rng: np.random.Generator, failure_prob: float
    ) -> Demonstrator:
        return TrackDemonstrator(env, rng, failure_prob)


class TrackPreview(Track):
    """``track`` whose scene state also shows where each target will be 0.2, 0.4 and 0.6 s
    ahead (a route in view): what a policy needs to act on a plan made up to 16 ticks
    earlier, which position and velocity alone do not tell it on a curving path."""

    name = "track_preview"
    PREVIEW_S = (0.2, 0.4, 0.6)


class TrackDemonstrator(Demonstrator):
    """Close in on where the target will be, then follow it, leading it by the arm's lag.

    The demonstrator knows the target's path (privileged information). Failures, both before
    tracking is scored: ``offset`` closes in 4 cm to the side of the target, ``late`` starts
    0.8 s late; the demonstrator then notices and corrects ("move left", ...).
    """

    FAILURES = ("offset", "late")
    LEAD_S = 0.1  # s, the command leads the target by the position servo's lag
    CATCH_UP_SPEED = 0.25  # m/s, top speed while closing in
    CLOSE = 0.01  # m, closing in ends within this distance of the lead point
    task: Track

    def script(self) -> Iterator[Step]:
        reach, follow = self.task.phases()
        if self.failure == "late":
            yield from self.wait(0.8, Labels(reach))
        miss = self._miss()
        yield from self._close_in(miss, Labels(reach))
        if self.failure is not None:
            error = self.task.target_pos() - self.site_pos()
            fix = Labels(reach, direction_words(error), correction=True)
            yield from self._close_in(np.zeros(3), fix)
        while True:
            yield self._follow(np.zeros(3), Labels(follow))

    def _lead_point(self, offset: np.ndarray) -> np.ndarray:
        dt = 1.0 / self.env.control_hz
        return self.task.target_pos(self.task.time + dt + self.LEAD_S) + offset

    def _follow(self, offset: np.ndarray, labels: Labels, max_speed: float = np.inf) -> Step:
        step = self._lead_point(offset) - self._pos
        limit = max_speed / self.env.control_hz
        norm = np.linalg.norm(step)
        if norm > limit:
            step *= limit / norm
        self._pos = self._pos + step
        self._yaw = arm_yaw(self._pos, roll=0.0)
        return self._command(labels)

    def _close_in(self, offset: np.ndarray, labels: Labels) -> Iterator[Step]:
        speed = self.CORRECTION_SPEED * 3 if labels.correction else self.CATCH_UP_SPEED
        while np.linalg.norm(self._lead_point(offset) - self._pos) > self.CLOSE:
            yield self._follow(offset, labels, speed)
        for _ in range(self.ticks(0.3)):  # follow for a moment, so the error shows
            yield self._follow(offset, labels)

    def _miss(self) -> np.ndarray:
        if self.failure == "offset":
            a = self.rng.uniform(-np.pi, np.pi)
            return 0.04 * np.array([np.cos(a), np.sin(a), 0.0])
        return np.zeros(3)
