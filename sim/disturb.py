"""Failures while a policy is in control (a push that drags the arm off course, a cube knocked
away before the grasp, a cube dropped on the way to the bin) and the scripted demonstrator's
recovery from a push.

The demonstrators inject their failures inside their own scripts (``sim/tasks/``), which needs the
demonstrator in control. When a learned policy drives the arm, a failure has to come from outside:
a ``Disturbance`` takes over the arm's commands at a random tick and drags the grip site
``distance`` metres in a random horizontal direction along a minimum-jerk path for
``duration_s`` (a bump, or a hand pulling the arm aside), holding the policy's gripper
command; afterwards the policy's commands apply again, from wherever the arm was left.
On the cube tasks two more kinds (``KINDS``) are the demonstrators' own failures, now hitting
the policy: ``knock`` sets the named cube sliding about 4 cm (to a free spot where cubes
start) when the open gripper first comes down within reach of it (below 10 cm, within 5 cm
horizontally), ``drop`` opens the gripper for ``duration_s`` when it first carries the
named cube clear of the table. Each episode draws one of the configured kinds from its seed;
``knock`` and ``drop`` fire at the first tick where their condition holds (never, if it never
does); only a push has a random onset in ``window``.

``Recovery`` is what the task's scripted demonstrator does about it: move back to where the push
began, labelled as a correction with direction words ("move left", "move back and up"), then
run its own script from there (it replans from the objects' current poses).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from sim.ik import DiffIK, min_jerk
from sim.robot import GRIPPER_OPEN
from sim.tasks import Labels, make_demonstrator
from sim.tasks.base import Step, direction_words
from sim.tasks.pick_place import clearance, in_workspace, slide_speed, words_towards_cube
from sim.units import gripper, to_follower

if TYPE_CHECKING:
    from sim.env import SimEnv

MIN_RADIUS, MAX_RADIUS = 0.08, 0.24  # m, a push never leaves this ring around the base
KINDS = ("push", "knock", "drop")  # failure kinds a Disturbance can inject
KNOCK_DISTANCE = 0.04  # m, how far a knocked cube slides
KNOCK_REACH = 0.05  # m, horizontal grip-to-cube distance at which the knock fires
KNOCK_HEIGHT = 0.10  # m, grip site height below which it fires (approaching, not passing over)
KNOCK_CLEARANCE = 0.05  # m, a knocked cube ends at least this far from other cubes and bins
DROP_HEIGHT = 0.04  # m, cube height above which a held cube counts as carried


class Disturbance:
    """A failure injected in some episodes; call it on every action.

    ``probability``: per-episode chance of a failure; ``kinds``: the kinds to draw from
    (``KINDS``); ``window``: earliest and latest onset of a push as fractions of the episode's
    ``max_steps`` (knocks and drops wait for their condition from the episode's start on).
    ``onset`` is the tick the failure began (None before it), ``kind`` this episode's kind,
    ``origin`` where the grip site was when a push began.
    """

    def __init__(
        self,
        env: SimEnv,
        probability: float,
        distance: float = 0.04,
        duration_s: float = 0.5,
        window: tuple[float, float] = (0.15, 0.5),
        kinds: tuple[str, ...] = ("push",),
    ) -> None:
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in KINDS]
        if not kinds or unknown:
            raise ValueError(f"disturbance.kinds={list(kinds)}: choose one or more of {KINDS}")
        if set(kinds) - {"push"} and not hasattr(env.task, "holding"):
            raise ValueError(
                f"disturbance.kinds={list(kinds)}: knock and drop need a cube task "
                f"(pick_place, conveyor), not {env.task.name}: use kinds=[push]"
            )
        self.kinds = kinds
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
        """Decide this episode's failure (call after ``env.reset``): whether, which kind, when
        (a push) and which way."""
        self.onset = None
        self.origin: np.ndarray | None = None
        self._angle = rng.uniform(-np.pi, np.pi)
        self._armed: int | None = None  # a knock's or drop's earliest tick
        lo, hi = (round(f * self.env.max_steps) for f in self.window)
        failing = rng.random() < self.probability
        push_onset = int(rng.integers(lo, hi + 1)) if failing else None
        kind = self.kinds[0]
        if len(self.kinds) > 1:  # a draw only then: push-only streams stay as they were
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
        self.kind: str | None = kind if failing else None
        if self.kind == "push":
            self.onset = push_onset
        elif self.kind is not None:
            self._armed = 0

    @property
    def active(self) -> bool:
        """Whether the failure has the arm (or, for a knock, the cube) at the current tick."""
        return self.onset is not None and 0 <= self.env.tick - self.onset < self.ticks

    @property
    def finished(self) -> bool:
        """Whether this episode's failure has happened and let go of the arm."""
        return self.onset is not None and self.env.tick >= self.onset + self.ticks

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """The command (6,) that reaches the arm at the current tick instead of ``action``."""
        if self._armed is not None and self.onset is None and self.env.tick >= self._armed:
            self._trigger()
        if not self.active:
            return action
        if self.kind == "drop":
            return np.r_[action[:5], gripper(GRIPPER_OPEN)].astype(np.float32)
        if self.kind == "knock":
            return action
        if self.env.tick == self.onset:
            self._start()
        s = min_jerk((self.env.tick - self.onset + 1) / self.ticks)
        self._q = self._ik.solve(self._q, self.origin + s * self._push, self._rot)
        return np.r_[to_follower(np.r_[self._q, 0.0])[:5], action[5]].astype(np.float32)

    def _trigger(self) -> None:
        """Fire a knock or a drop at this tick if its condition holds."""
        task = self.env.task
        cube = task.cube_pos(task.color)  # (3,)
        grip = self.env.data.site_xpos[self.env.robot.grip_site]  # (3,)
        if self.kind == "drop":
            if task.holding(task.color) and cube[2] > DROP_HEIGHT:
                self.onset = self.env.tick
            return
        near = np.linalg.norm((cube - grip)[:2]) < KNOCK_REACH and grip[2] < KNOCK_HEIGHT
        if near and not task.holding(task.color):
            self.onset = self.env.tick
            task.push(task.color, self._knock_velocity(cube))

    def _knock_velocity(self, cube: np.ndarray) -> np.ndarray:
        """A sliding velocity (3,) carrying the cube ``KNOCK_DISTANCE`` in the episode's drawn
        direction, turned as little as needed to end where cubes start (``in_workspace``) and
        ``KNOCK_CLEARANCE`` clear of the other cubes and the bins, as the demonstrator's own
        knocks do (the most clearance if no direction has enough)."""
        task = self.env.task
        turns = self._angle + np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ends = [cube[:2] + KNOCK_DISTANCE * np.array([np.cos(a), np.sin(a)]) for a in turns]
        room = [clearance(task, [e]) for e in ends]
        fits = [i for i, e in enumerate(ends) if in_workspace(e) and room[i] >= KNOCK_CLEARANCE]
        i = fits[0] if fits else int(np.argmax(room))
        return slide_speed(KNOCK_DISTANCE) * np.array([np.cos(turns[i]), np.sin(turns[i]), 0.0])

    def _start(self) -> None:
        self._q = self.env.data.qpos[self.env.robot.qpos[:5]].copy()  # (5,) actual joints
        self.origin, self._rot = self._ik.forward(self._q)
        push = self.distance * np.array([np.cos(self._angle), np.sin(self._angle), 0.0])
        if not MIN_RADIUS <= np.linalg.norm((self.origin + push)[:2]) <= MAX_RADIUS:
            push = -push  # towards the workspace rather than out of it
        self._push = push


class Recovery:
    """The task's scripted demonstrator taking over a disturbed episode, to the end.

    After a push (``origin`` given): back to where the push began, labelled as a correction
    with direction words, then its own script. After a knock or a drop (``origin`` None): its
    own script from the current state (it replans from the objects' poses), the first move
    labelled as the correction ``fix`` ("move left" towards a knocked cube, "pick up the
    dropped cube"), as the demonstrator labels its own recoveries.

    The takeover starts a new episode as far as recording goes, so the env's tick count
    restarts at 0 and the demonstrator gets the task's full ``max_steps``.
    """

    def __init__(
        self, env: SimEnv, rng: np.random.Generator, origin: np.ndarray | None, fix: str = ""
    ) -> None:
        env.tick = 0
        self.demonstrator = make_demonstrator(env, rng, failure_prob=0.0)
        if origin is None:
            self.demonstrator.initial_fix = fix
            self._steps = self._own_script()
        else:
            self.error = np.asarray(origin) - self.demonstrator.site_pos()  # (3,)
            self._steps = self._script(np.asarray(origin))

    def _own_script(self) -> Iterator[Step]:
        demonstrator = self.demonstrator
        while not demonstrator.done:
            yield demonstrator.act()

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


def recovery_fix(env: SimEnv, kind: str) -> str:
    """The corrective instruction a takeover after a knock or a drop starts with."""
    if kind == "drop":
        return "pick up the dropped cube"
    task = env.task
    site = env.data.site_xpos[env.robot.grip_site]
    return words_towards_cube(task, site, fallback=f"move above the {task.color} cube")
