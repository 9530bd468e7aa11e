"""Conveyor: pick the named cube off a moving belt and put it in the bin.

A belt runs across the robot's front (along y, at x = ``BELT_X``), one way or the other, at a
speed drawn per episode from ``SPEED_RANGE``. Three 3 cm cubes (red, green, blue; two are
distractors) ride on it, spread along it at random, with random yaws; a bin stands off the belt,
left or right, nearer the robot. Success: the named cube rests inside the bin and the fingers
no longer touch it.

How the belt moves the cubes: the cubes are ordinary free bodies; the belt is a thin box whose
contacts are frictionless (it outranks the cubes' friction through its geom priority), and
before each control tick's physics (``advance``) every cube lying on the belt and touched by
neither finger is given the belt's velocity. So a cube rides at exactly the belt speed, stops
riding the moment a finger touches it (a grasped cube follows the gripper physically), rides
again if dropped back on the belt, and stays where it lands on the table. The belt is a loop:
a riding cube that reaches the downstream end reappears at the upstream end (cubes keep their
spacing, so none is ever lost and a missed cube comes round again); the jump waits while the
gripper is low over the upstream end, so a cube never appears inside the fingers. The fingers
do not collide with the belt (its own contact bit), only with the cubes on it.

Inference delay matters here. The demonstrator closes its fingers along the belt, opened 6 cm
apart around a 3 cm cube: a grasp tolerates 1.5 cm of error along the belt (more, and the
downstream finger comes down on the cube). In 8 control ticks at 30 Hz (0.27 s) a cube travels
0.8 cm at the slowest belt speed (3 cm/s) and 2.4 cm at the fastest (9 cm/s); in 0.3 s, 0.9 and
2.7 cm. So a plan that does not lead the cube by its own delay still grasps a slow cube but
misses a fast one; the demonstrator, which re-plans every tick, grasps both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from sim.ik import min_jerk
from sim.robot import GRIPPER_CLOSED, GRIPPER_OPEN, NO_CONTACT, SCENE_CONTYPE
from sim.tasks.base import COLORS, Demonstrator, Labels, Step, arm_yaw
from sim.tasks.pick_place import (
    BIN_HALF,
    CARRY_Z,
    CUBE_HALF,
    FINGER_REACH,
    PickPlace,
    PickPlaceDemonstrator,
    add_bin,
    add_cubes,
    over,
    wall_distance,
)

if TYPE_CHECKING:
    from sim.env import SimEnv

SPEED_RANGE = (0.03, 0.09)  # m/s, belt speed, drawn per episode
BELT_X = 0.165  # m, the belt's centreline (it runs along y)
BELT_LENGTH = 0.26  # m, the loop: a cube is carried from y = -L/2 to L/2 (or back), then wraps
BELT_HALF_WIDTH = 0.03  # m
BELT_TOP = 0.002  # m, height of the belt's surface above the table
BELT_CONTYPE = 4  # contact bit of the belt: it carries the cubes, the fingers pass through it
BELT_RGBA = (0.2, 0.2, 0.22, 1)
REST_Z = BELT_TOP + CUBE_HALF  # m, centre height of a cube riding the belt
LANE = 0.008  # m, a cube starts this far at most either side of the centreline
MIN_SPACING = 0.075  # m, between cube centres along the belt (around the loop)
BIN_XY = (0.07, 0.16)  # m, bin centre; y is +-, the side drawn per episode
BIN_JITTER = 0.01  # m, uniform jitter of the bin centre along x and y
ENTRY_CLEAR = 0.06  # m, a wrapping cube waits while the grip site is this close to its entry ...
ENTRY_CLEAR_Z = 0.06  # m, ... and lower than this
FAILURES = ("still_holding", "not_released", "wrong_object", "missed_grasp", "no_grasp", "dropped")


class Conveyor(PickPlace):
    """A pick and place whose cubes ride a belt (it reuses PickPlace's cube queries)."""

    name = "conveyor"
    max_steps = 600

    def build(self, spec: mujoco.MjSpec) -> None:
        add_cubes(spec)
        half_length = BELT_LENGTH / 2 + CUBE_HALF  # a cube at either end lies fully on it
        spec.worldbody.add_geom(
            name="belt", type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[BELT_HALF_WIDTH, half_length, BELT_TOP / 2], pos=[BELT_X, 0, BELT_TOP / 2],
            rgba=BELT_RGBA, friction=[0, 0, 0], condim=1, priority=2,
            contype=BELT_CONTYPE, conaffinity=SCENE_CONTYPE,
        )  # fmt: skip
        for end in (-1, 1):  # rollers at the ends, for the cameras only
            spec.worldbody.add_geom(
                type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.006, BELT_HALF_WIDTH, 0],
                pos=[BELT_X, end * (half_length + 0.006), 0.006], quat=[0.7071068, 0, 0.7071068, 0],
                rgba=(0.5, 0.5, 0.52, 1), contype=NO_CONTACT, conaffinity=NO_CONTACT,
            )  # fmt: skip
        add_bin(spec.worldbody.add_body(name="bin", mocap=True))

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        self._bin_mocap = model.body("bin").mocapid[0]
        self.speed, self.direction = SPEED_RANGE[0], 1.0  # set by reset
        self._kick: dict[str, np.ndarray] = {}  # push velocities for the next tick
        self._lifted = dict.fromkeys(COLORS, False)  # ever lifted off its support
        self._touched = dict.fromkeys(COLORS, False)  # ever touched by a finger

    def reset(self, rng: np.random.Generator) -> str:
        self.color = str(rng.choice(list(COLORS)))
        self.side = str(rng.choice(["left", "right"]))
        self.speed = float(rng.uniform(*SPEED_RANGE))
        self.direction = float(rng.choice([-1.0, 1.0]))
        # Spread along the loop: MIN_SPACING apart, the slack split at random, a random start.
        slack = np.sort(rng.uniform(0, BELT_LENGTH - len(COLORS) * MIN_SPACING, len(COLORS) - 1))
        gaps = MIN_SPACING + np.diff(np.r_[0.0, slack])  # (2,) to the next two cubes
        along = (rng.uniform(0, BELT_LENGTH) + np.r_[0.0, np.cumsum(gaps)]) % BELT_LENGTH
        for color, s in zip(rng.permutation(list(COLORS)), along, strict=True):
            x, yaw = BELT_X + rng.uniform(-LANE, LANE), rng.uniform(0, np.pi / 2)
            adr = self._qpos[color]
            quat = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            self.data.qpos[adr : adr + 7] = [x, self.belt_y(s), REST_Z, *quat]
            self.data.qvel[self._dof[color] : self._dof[color] + 6] = [
                *self.belt_velocity(),
                0,
                0,
                0,
            ]
        jitter = rng.uniform(-BIN_JITTER, BIN_JITTER, size=2)
        sign = 1.0 if self.side == "left" else -1.0
        bin_xy = np.array([BIN_XY[0], sign * BIN_XY[1]]) + jitter
        self.data.mocap_pos[self._bin_mocap] = [*bin_xy, 0.0]
        self._kick = {}
        self._lifted = dict.fromkeys(COLORS, False)
        self._touched = dict.fromkeys(COLORS, False)
        return f"pick the {self.color} cube off the belt and put it in the bin"

    def bin_name(self) -> str:
        return "the bin"  # one bin, whichever side it is on

    # The belt.

    def belt_velocity(self) -> np.ndarray:
        """(3,) m/s, the velocity of the belt's surface."""
        return np.array([0.0, self.direction * self.speed, 0.0])

    def belt_s(self, y: float) -> float:
        """Distance along the belt from its upstream end (0) to ``y``; L at the downstream end."""
        return self.direction * y + BELT_LENGTH / 2

    def belt_y(self, s: float) -> float:
        """The y of the point ``s`` along the belt (inverse of ``belt_s``)."""
        return self.direction * (s - BELT_LENGTH / 2)

    def on_belt(self, color: str) -> bool:
        """Whether the cube lies on the belt (riding it, unless a finger touches it)."""
        x, y, z = self.cube_pos(color)
        across, along = abs(x - BELT_X) < BELT_HALF_WIDTH, abs(y) <= BELT_LENGTH / 2 + CUBE_HALF
        return bool(across and along and z < REST_Z + 0.003)

    def drift(self, color: str) -> np.ndarray:
        """(3,) m/s, the velocity the cube would have if nothing touched it: the belt's or 0."""
        return self.belt_velocity() if self.on_belt(color) else np.zeros(3)

    def advance(self, dt: float) -> None:
        """Give each riding cube the belt's velocity, wrapping it at the downstream end."""
        entry = np.array([BELT_X, self.belt_y(0.0)])
        grip = self.data.site_xpos[self._site]
        entry_busy = np.linalg.norm(grip[:2] - entry) < ENTRY_CLEAR and grip[2] < ENTRY_CLEAR_Z
        touched = self.touched()
        for color in COLORS:
            dof = self._dof[color]
            if color in self._kick:
                self.data.qvel[dof : dof + 6] = [*self._kick.pop(color), 0, 0, 0]
                continue
            if not self.on_belt(color) or color in touched:
                continue
            velocity = self.belt_velocity()
            adr = self._qpos[color]
            if self.belt_s(self.data.qpos[adr + 1]) > BELT_LENGTH:
                if entry_busy:
                    velocity = np.zeros(3)  # wait at the end until the entry is clear
                else:
                    self.data.qpos[adr + 1] -= self.direction * BELT_LENGTH
            self.data.qvel[dof : dof + 6] = [*velocity, 0, 0, 0]

    def after_step(self) -> None:
        touched = self.touched()
        for color in COLORS:
            self._lifted[color] |= bool(self.cube_pos(color)[2] > REST_Z + 0.01)
            self._touched[color] |= color in touched

    def push(self, color: str, velocity: np.ndarray) -> None:
        """Set the cube sliding with ``velocity`` (3,) m/s for one control tick (a knock); then
        the belt carries it again if it is still on it."""
        self._kick[color] = np.asarray(velocity, dtype=float)

    # State queries.

    def cube_velocity(self, color: str) -> np.ndarray:
        dof = self._dof[color]
        return self.data.qvel[dof : dof + 3].copy()

    def bin_pos(self, side: str | None = None) -> np.ndarray:
        """Centre (3,) of the bin's floor (there is one bin; ``side`` is ignored)."""
        return self.data.mocap_pos[self._bin_mocap].copy()

    def environment_state(self) -> np.ndarray:
        """(27,) each cube's centre, velocity and yaw (cos and sin of 4 * yaw, as pick_place),
        in red, green, blue order, then the bin's centre. The velocities carry the belt's
        speed and direction, so a policy can lead a cube by its inference delay."""
        qpos, qvel, values = self.data.qpos, self.data.qvel, []
        for color in COLORS:  # read as Python floats: this runs every tick
            turn = 4 * self.cube_axis_yaw(color)
            adr, dof = self._qpos[color], self._dof[color]
            values += qpos[adr : adr + 3].tolist() + qvel[dof : dof + 3].tolist()
            values += [math.cos(turn), math.sin(turn)]
        values += self.data.mocap_pos[self._bin_mocap].tolist()
        return np.array(values, dtype=np.float32)

    def environment_names(self) -> list[str]:
        quantities = ("x", "y", "z", "vx", "vy", "vz", "cos4yaw", "sin4yaw")
        return [f"cube_{c}.{q}" for c in COLORS for q in quantities] + [f"bin.{a}" for a in "xyz"]

    def in_bin(self, color: str) -> bool:
        offset = self.cube_pos(color) - self.bin_pos()
        return bool(np.all(np.abs(offset[:2]) < BIN_HALF - 0.005) and offset[2] < 2 * CUBE_HALF)

    def success(self) -> bool:
        return self.in_bin(self.color) and not self.touching(self.color)

    def outcome(self) -> tuple[float, str | None]:
        """Failure classes, first match: the named cube is held (still_holding), in the bin but
        touched (not_released); it was never lifted while another cube was lifted or lies in
        the bin (wrong_object); never lifted though a finger touched it (missed_grasp: what a
        grasp closing behind a moving cube gives), never touched at all (no_grasp); else it was
        lifted and ended outside the bin (dropped). The distance is the cube's horizontal one
        to the bin's centre."""
        cube = self.cube_pos(self.color)
        distance = float(np.linalg.norm(cube[:2] - self.bin_pos()[:2]))
        if self.success():
            return distance, None
        if self.holding(self.color):
            return distance, "still_holding"
        if self.in_bin(self.color):
            return distance, "not_released"
        if not self._lifted[self.color]:
            others = [c for c in COLORS if c != self.color]
            if any(self._lifted[c] or self.in_bin(c) for c in others):
                return distance, "wrong_object"
            return distance, "missed_grasp" if self._touched[self.color] else "no_grasp"
        return distance, "dropped"

    def make_demonstrator(
        self, env: SimEnv, rng: np.random.Generator, failure_prob: float
    ) -> Demonstrator:
        return ConveyorDemonstrator(env, rng, failure_prob)


ABOVE_Z = 0.065  # m, grip site height when hovering over a cube (fingertips clear the cubes)
GRASP_Z = REST_Z + 0.007  # m, grip site height when closing on a cube
GRASP_S = 1.6  # s, from hovering over a cube to holding it: it must not wrap before then
END_MARGIN = 0.02  # m, a grasp must be done this far before the downstream end


class ConveyorDemonstrator(PickPlaceDemonstrator):
    """Intercept the cube, close while riding along with it, lift, carry to the bin, release.

    It re-plans every tick from the cube's position and the belt's velocity (privileged, as
    track's demonstrator knows its paths): the hand aims where the cube will be one tick plus
    the servo's lag ahead, and a cube too close to the downstream end to be grasped in time is
    awaited above the upstream end, where it reappears. Once a finger touches the cube the hand
    keeps the belt's pace (feed-forward) until the cube is held and lifted. The grasp closes
    along the belt (the closing axis scored as pick_place's, for clearance and a small roll).

    Failures as pick_place's: ``missed_grasp`` closes 3.5 cm beside the cube (towards the robot),
    ``drop`` opens the gripper on the way to the bin, ``knock`` jolts the cube
    3 cm along the belt just before the grasp. The recoveries are labelled as corrections.
    """

    FAILURES = ("missed_grasp", "drop", "knock")
    LEAD_S = 0.02  # s, the command leads the cube by the position servo's lag (measured)
    CATCH_UP_SPEED = 0.15  # m/s, top speed of the hand relative to the cube while closing in
    GAIN = 0.25  # fraction of the remaining error removed per tick while closing in
    CLOSE = 0.003  # m, closing in ends within this distance of the aim point
    task: Conveyor

    def script(self) -> Iterator[Step]:
        above, grasp, lift, carry, release = self.task.phases()
        color, fix = self.task.color, ""
        while True:
            labels = Labels(above, fix, correction=bool(fix))
            beside = self._inject("missed_grasp")
            offset = np.array([-0.035, 0.0, 0.0]) if beside else np.zeros(3)
            yield from self._close_in(offset, labels)
            if self._inject("knock"):
                self.task.push(color, self._knock_velocity())
                yield from self._ride(0.4, Labels(above))
            if np.linalg.norm(self._aim(offset) - self._pos[:2]) > 0.01:  # not where expected
                fix = self._towards_cube(fallback=f"move above the {color} cube")
                continue
            fix = ""
            yield from self._ride(0.5, Labels(grasp), offset, z=GRASP_Z)
            yield from self._ride(0.45, Labels(grasp), offset, grip=GRIPPER_CLOSED)
            yield from self._ride(0.2, Labels(grasp), offset)
            if not self.task.holding(color):
                retry = Labels(grasp, "open the gripper and retry", correction=True)
                yield from self.move(over(self._pos, ABOVE_Z), retry, grip=GRIPPER_OPEN)
                fix = self._towards_cube(fallback=retry.corrective_instruction)
                continue
            yield from self._ride(0.6, Labels(lift), z=CARRY_Z, slow_down=True)
            fix = yield from self._carry_and_release(color, carry, release)
            if fix is None:
                break
        yield from self.hold(Labels(release))

    def _aim(self, offset: np.ndarray, ahead_s: float = 0.0) -> np.ndarray:
        """(2,) where the grip site should be commanded now to meet the cube (plus ``offset``)
        ``ahead_s`` seconds from now: one tick and the servo lag ahead of it."""
        color = self.task.color
        t = ahead_s + 1.0 / self.env.control_hz + self.LEAD_S
        return (self.task.cube_pos(color) + t * self.task.drift(color) + offset)[:2]

    def _hover_point(self, offset: np.ndarray) -> tuple[np.ndarray, bool]:
        """(2,) the point to close in on, and whether it is the cube's (else the belt's
        upstream end, where a cube too near the downstream end will reappear)."""
        aim = self._aim(offset)
        if not self.task.on_belt(self.task.color):
            return aim, True
        reach_s = np.linalg.norm(aim - self._pos[:2]) / self.CATCH_UP_SPEED
        s = self.task.belt_s(self._aim(offset, reach_s + GRASP_S)[1])
        if s <= BELT_LENGTH - END_MARGIN:
            return aim, True
        entry = self.task.belt_y(self.task.speed * (self.LEAD_S + 0.2))
        return np.array([self.task.cube_pos(self.task.color)[0], entry]), False

    def _close_in(self, offset: np.ndarray, labels: Labels) -> Iterator[Step]:
        """Move above the cube and follow it there until the grip site is over it."""
        dt = 1.0 / self.env.control_hz
        speed = self.CORRECTION_SPEED if labels.correction else self.CATCH_UP_SPEED
        target_yaw = self._grasp_yaw()
        while True:  # the episode's end (max_steps) stops it, should the cube never come
            point, on_cube = self._hover_point(offset)
            target = np.r_[point, ABOVE_Z]
            error = target - self._pos
            if on_cube and np.linalg.norm(error) < self.CLOSE and self._yaw == target_yaw:
                break
            step = self.GAIN * error
            step *= min(1.0, speed * dt / max(np.linalg.norm(step), 1e-9))
            self._pos = self._pos + step + dt * self.task.drift(self.task.color) * on_cube
            self._yaw += np.clip(target_yaw - self._yaw, -self.YAW_SPEED * dt, self.YAW_SPEED * dt)
            yield self._command(labels)
        for _ in range(self.ticks(0.5)):  # follow until the arm has caught up
            cube = self.task.cube_pos(self.task.color) + offset
            if np.linalg.norm(self.site_pos()[:2] - cube[:2]) < 0.004:
                return
            yield from self._ride(dt, labels, offset)

    def _ride(
        self,
        seconds: float,
        labels: Labels,
        offset: np.ndarray | None = None,
        *,
        z: float | None = None,
        grip: float | None = None,
        slow_down: bool = False,
    ) -> Iterator[Step]:
        """Keep over the cube for ``seconds`` while the height and finger opening move to
        ``z`` and ``grip`` (minimum jerk). With ``offset`` the hand aims at the cube while no
        finger touches it; otherwise, or once touched, it keeps the pace the cube had
        (``slow_down``: easing to a stop over the move)."""
        dt = 1.0 / self.env.control_hz
        pace = self.task.drift(self.task.color)
        start_z, start_grip = self._pos[2], self._grip
        z = start_z if z is None else z
        grip = start_grip if grip is None else grip
        n = self.ticks(seconds)
        for i in range(1, n + 1):
            s = min_jerk(i / n)
            if offset is not None and not self.task.touching(self.task.color):
                xy = self._aim(offset)
            else:
                xy = self._pos[:2] + dt * pace[:2] * ((1 - i / n) if slow_down else 1.0)
            self._pos = np.r_[xy, start_z + s * (z - start_z)]
            self._grip = start_grip + s * (grip - start_grip)
            yield self._command(labels)

    def _clearance(self, points: list[np.ndarray]) -> float:
        """Smallest horizontal distance from ``points`` to a distractor cube or the bin's walls."""
        cubes = [np.linalg.norm(p - o) for p in points for o in self._others()]
        walls = [wall_distance(p, self.task.bin_pos()[:2]) for p in points]
        return min(cubes + walls)

    def _grasp_yaw(self) -> float:
        """Closing-axis yaw along a pair of faces: fingers clear of the distractors, nearer
        to along the belt (y), with a small wrist roll (in [-pi/2, pi/2))."""
        cube = self.task.cube_pos(self.task.color)
        face = self.task.cube_axis_yaw(self.task.color)
        pan = math.atan2(cube[1], cube[0])

        def roll(axis: float) -> float:
            return (pan - axis + np.pi) % np.pi - np.pi / 2

        def score(axis: float) -> float:
            u = FINGER_REACH * np.array([np.cos(axis), np.sin(axis)])
            clear = self._clearance([cube[:2] + u, cube[:2] - u])
            return min(clear, 0.04) + 0.01 * abs(math.sin(axis)) - 0.005 * abs(roll(axis))

        return arm_yaw(cube, roll(max((face, face + np.pi / 2), key=score)))

    def _knock_velocity(self) -> np.ndarray:
        """(3,) a one-tick velocity that jolts the cube 3 cm along the belt, the way with more
        room (to its neighbours and to the belt's ends), so it stays on the belt."""
        color, jolt = self.task.color, 0.03
        s = self.task.belt_s(self.task.cube_pos(color)[1])
        others = [self.task.belt_s(self.task.cube_pos(c)[1]) for c in COLORS if c != color]
        room = {
            1.0: min([(o - s) % BELT_LENGTH for o in others] + [BELT_LENGTH - s]),
            -1.0: min([(s - o) % BELT_LENGTH for o in others] + [s]),
        }
        sign = max(room, key=room.get)
        speed = jolt * self.env.control_hz * sign * self.task.direction
        return self.task.belt_velocity() + np.array([0.0, speed, 0.0])

    def _drop_point(self, start: np.ndarray, bin_pos: np.ndarray) -> np.ndarray:
        """A point on the way to the bin, over free table off the belt, where the cube is let
        go."""
        goal = over(bin_pos, CARRY_Z)

        def score(f: float) -> float:
            p = (start + f * (goal - start))[:2]
            off_belt = abs(p[0] - BELT_X) > BELT_HALF_WIDTH + CUBE_HALF
            return min(self._clearance([p]), 0.03) + 0.05 * off_belt

        f = max(self.rng.permutation([0.3, 0.4, 0.5, 0.6, 0.7]), key=score)
        return start + f * (goal - start)
