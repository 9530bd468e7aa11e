"""Pick and place: put the named cube in the named bin.

Three 3 cm cubes (red, green, blue; two are distractors) lie on the table in front of the
robot, and two shallow bins stand at its left (+y) and right (-y). Success: the named cube
rests inside the named bin and the fingers no longer touch it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from sim.robot import GRIPPER_CLOSED, GRIPPER_OPEN, NO_CONTACT, SCENE_CONTYPE
from sim.tasks.base import (
    COLORS,
    Demonstrator,
    Labels,
    Step,
    Task,
    arm_yaw,
    direction_words,
    sample_apart,
)

if TYPE_CHECKING:
    from sim.env import SimEnv

CUBE_HALF = 0.015  # m, half the cube's edge
CUBE_MASS = 0.03  # kg
CUBE_FRICTION = 0.7  # sliding, as the table's: a pushed cube slides rather than tips over
RADIUS_RANGE = (0.13, 0.21)  # m, horizontal distance of a cube from the base
ANGLE_RANGE = (-0.42, 0.42)  # rad, azimuth of a cube (0 = straight ahead)
MIN_SEPARATION = 0.07  # m, between cube centres
BINS = {"left": (0.09, 0.17), "right": (0.09, -0.17)}  # bin centres (x, y) on the table
BIN_HALF = 0.04  # m, half the inner width of a bin
BIN_WALL = (0.004, 0.0125)  # m, half thickness and half height of a bin wall
BIN_RGBA = (0.35, 0.3, 0.25, 1)
FAILURES = ("wrong_bin", "still_holding", "not_released", "wrong_object", "no_grasp", "dropped")


def draw_cube(rng: np.random.Generator) -> np.ndarray:
    """A random cube pose (3,) as (x, y, yaw) in the region where cubes start."""
    r, a = rng.uniform(*RADIUS_RANGE), rng.uniform(*ANGLE_RANGE)
    return np.array([r * np.cos(a), r * np.sin(a), rng.uniform(0, np.pi / 2)])


def in_workspace(xy: np.ndarray, margin: float = 0.0) -> bool:
    """Whether ``xy`` (2,) lies in the region where cubes start (shrunk by ``margin``)."""
    r, a = np.linalg.norm(xy), math.atan2(xy[1], xy[0])
    lo, hi = RADIUS_RANGE
    return lo + margin <= r <= hi - margin and abs(a) <= ANGLE_RANGE[1] + 0.05


def add_cubes(spec: mujoco.MjSpec) -> None:
    """One free 3 cm cube per colour, bodies, joints and geoms ``cube_<colour>``."""
    for color, rgba in COLORS.items():
        body = spec.worldbody.add_body(name=f"cube_{color}", pos=[0, 0, CUBE_HALF])
        body.add_freejoint(name=f"cube_{color}")
        body.add_geom(
            name=f"cube_{color}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3,
            rgba=rgba, mass=CUBE_MASS, friction=[CUBE_FRICTION, 0.005, 0.0001],
            contype=SCENE_CONTYPE, conaffinity=SCENE_CONTYPE,
        )  # fmt: skip


def add_bin(body: mujoco.MjsBody) -> None:
    """A shallow open bin (a floor and four walls) centred on ``body``'s origin."""
    box = mujoco.mjtGeom.mjGEOM_BOX
    thick, height = BIN_WALL
    body.add_geom(
        type=box, size=[BIN_HALF, BIN_HALF, 0.001], pos=[0, 0, 0.001], rgba=BIN_RGBA,
        contype=NO_CONTACT, conaffinity=NO_CONTACT,
    )  # fmt: skip
    offset = BIN_HALF + thick
    for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        half = [thick, offset + thick, height] if sx else [offset + thick, thick, height]
        body.add_geom(
            type=box, size=half, pos=[sx * offset, sy * offset, height], rgba=BIN_RGBA,
            contype=SCENE_CONTYPE, conaffinity=SCENE_CONTYPE,
        )  # fmt: skip


class PickPlace(Task):
    name = "pick_place"
    max_steps = 450

    def build(self, spec: mujoco.MjSpec) -> None:
        add_cubes(spec)
        for side, (x, y) in BINS.items():
            add_bin(spec.worldbody.add_body(name=f"bin_{side}", pos=[x, y, 0]))

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        self._body = {c: model.body(f"cube_{c}").id for c in COLORS}
        self._geom = {c: model.geom(f"cube_{c}").id for c in COLORS}
        joints = {c: model.joint(f"cube_{c}") for c in COLORS}
        self._qpos = {c: j.qposadr[0] for c, j in joints.items()}
        self._dof = {c: j.dofadr[0] for c, j in joints.items()}
        self._site = model.site("grip").id
        self._gripper_qpos = model.joint("gripper").qposadr[0]
        self._fingers = {model.geom(f"finger_{s}").id for s in ("left", "right")}
        self._finger_ids = tuple(sorted(self._fingers))
        self.color, self.side = "red", "left"
        self._start = {c: np.zeros(2) for c in COLORS}  # set by reset

    def reset(self, rng: np.random.Generator) -> str:
        self.color = str(rng.choice(list(COLORS)))
        self.side = str(rng.choice(list(BINS)))
        poses = sample_apart(rng, draw_cube, len(COLORS), MIN_SEPARATION, dims=2)  # (3, 3)
        for color, (x, y, yaw) in zip(COLORS, poses, strict=True):
            adr = self._qpos[color]
            quat = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            self.data.qpos[adr : adr + 7] = [x, y, CUBE_HALF, *quat]
        self._start = {c: self.cube_pos(c)[:2] for c in COLORS}  # where each cube began
        return f"put the {self.color} cube in the {self.side} bin"

    def phases(self) -> tuple[str, ...]:
        c = self.color
        return (
            f"move above the {c} cube",
            f"grasp the {c} cube",
            f"lift the {c} cube",
            f"move to {self.bin_name()}",
            f"release the {c} cube",
        )

    def bin_name(self) -> str:
        """How the instructions name the bin."""
        return f"the {self.side} bin"

    # State queries (the demonstrator uses them too).

    def cube_pos(self, color: str) -> np.ndarray:
        adr = self._qpos[color]
        return self.data.qpos[adr : adr + 3].copy()

    def cube_axis_yaw(self, color: str) -> float:
        """Yaw in [0, pi/2) of the cube's side faces (the cube looks the same every pi/2)."""
        rot = self.data.xmat[self._body[color]].tolist()  # row-major 3x3, as 9 floats
        tilt = [abs(z) for z in rot[6:9]]
        side = tilt.index(min(tilt))  # the axis closest to horizontal (the first, on a tie)
        return math.atan2(rot[3 + side], rot[side]) % (np.pi / 2)

    def bin_pos(self, side: str | None = None) -> np.ndarray:
        """Centre (3,) of the floor of the bin on ``side`` (default: the instruction's)."""
        return np.array([*BINS[side or self.side], 0.0])

    def environment_state(self) -> np.ndarray:
        """(21,) each cube's centre and yaw, in red, green, blue order, then the bins' centres.

        A quarter turn leaves a cube unchanged, so its yaw (which the demonstrator grasps along) is
        given as cos and sin of 4 * yaw: continuous, and the same for all four equal poses.
        """
        parts = []
        for color in COLORS:
            turn = 4 * self.cube_axis_yaw(color)
            parts.append([*self.cube_pos(color), math.cos(turn), math.sin(turn)])
        parts += [self.bin_pos(side) for side in BINS]
        return np.concatenate(parts, dtype=np.float32)

    def environment_names(self) -> list[str]:
        cubes = [f"cube_{c}.{q}" for c in COLORS for q in ("x", "y", "z", "cos4yaw", "sin4yaw")]
        return cubes + [f"bin_{side}.{axis}" for side in BINS for axis in "xyz"]

    def touching(self, color: str) -> bool:
        """Whether a finger touches the cube."""
        return color in self.touched()

    def touched(self) -> set[str]:
        """The colours of the cubes a finger touches (one pass over the contacts, so that
        a tick's per-cube checks read the contacts once)."""
        pairs = self.data.contact.geom  # (ncon, 2) geom ids of each active contact
        if not len(pairs):
            return set()
        left, right = self._finger_ids
        finger = (pairs == left) | (pairs == right)
        # the other geom of each contact with a finger in it (-1 where none is a finger)
        other = np.where(finger[:, 1], pairs[:, 0], np.where(finger[:, 0], pairs[:, 1], -1))
        ids = set(other.tolist())
        return {color for color in COLORS if self._geom[color] in ids}

    def holding(self, color: str) -> bool:
        """Whether the cube sits between the closed fingers."""
        near = np.linalg.norm(self.cube_pos(color) - self.data.site_xpos[self._site]) < 0.02
        return bool(near and self.data.qpos[self._gripper_qpos] > 0.006)

    def push(self, color: str, velocity: np.ndarray) -> None:
        """Set the cube sliding with ``velocity`` (3,) m/s (used to inject a knock)."""
        adr = self._dof[color]
        self.data.qvel[adr : adr + 6] = [*velocity, 0, 0, 0]

    def success(self) -> bool:
        offset = self.cube_pos(self.color) - self.bin_pos()
        inside = bool(np.all(np.abs(offset[:2]) < BIN_HALF - 0.005) and offset[2] < 2 * CUBE_HALF)
        return inside and not self.touching(self.color)

    def outcome(self) -> tuple[float, str | None]:
        """Failure classes, first match: the named cube is in the other bin (wrong_bin), held
        (still_holding), in the named bin but touched (not_released), never moved while
        another cube did (wrong_object), never moved (no_grasp), else moved and left on the
        table (dropped). The distance is the cube's horizontal one to the bin's centre."""
        cube = self.cube_pos(self.color)
        distance = float(np.linalg.norm(cube[:2] - self.bin_pos()[:2]))
        if self.success():
            return distance, None
        other = next(s for s in BINS if s != self.side)
        if np.all(np.abs(cube[:2] - self.bin_pos(other)[:2]) < BIN_HALF):
            return distance, "wrong_bin"
        if self.holding(self.color):
            return distance, "still_holding"
        if np.all(np.abs(cube[:2] - self.bin_pos()[:2]) < BIN_HALF):
            return distance, "not_released"
        moved = {c: np.linalg.norm(self.cube_pos(c)[:2] - self._start[c]) > 0.01 for c in COLORS}
        if not moved[self.color]:
            return distance, "wrong_object" if any(moved.values()) else "no_grasp"
        return distance, "dropped"

    def make_demonstrator(
        self, env: SimEnv, rng: np.random.Generator, failure_prob: float
    ) -> Demonstrator:
        return PickPlaceDemonstrator(env, rng, failure_prob)


ABOVE_Z = 0.08  # m, grip site height when approaching a cube
GRASP_Z = 0.022  # m, grip site height when closing on a cube (centre at 0.015)
CARRY_Z = 0.085  # m, grip site height while carrying
RELEASE_Z = 0.05  # m, grip site height when letting go above a bin
FINGER_REACH = 0.034  # m, open finger centre from the grip site along the closing axis


def words_towards_cube(task: PickPlace, site: np.ndarray, fallback: str) -> str:
    """Words from the grip ``site`` (3,) towards the named cube ("move left", ...), or
    ``fallback`` within 1 cm of above it (the demonstrator's and a takeover's correction)."""
    error = (task.cube_pos(task.color) - site)[:2]
    return direction_words(error) if np.linalg.norm(error) >= 0.01 else fallback


def clearance(task: PickPlace, points: list[np.ndarray]) -> float:
    """Smallest horizontal distance from ``points`` (2,) to a distractor cube or a bin wall."""
    others = [task.cube_pos(c)[:2] for c in COLORS if c != task.color]
    cubes = [np.linalg.norm(p - o) for p in points for o in others]
    walls = [wall_distance(p, np.array(c)) for p in points for c in BINS.values()]
    return min(cubes + walls)


def slide_speed(distance: float) -> float:
    """The speed (m/s) at which a cube slides ``distance`` m on the table (v^2 = 2 mu g d)."""
    return math.sqrt(2 * CUBE_FRICTION * 9.81 * distance)


def wall_distance(xy: np.ndarray, center: np.ndarray) -> float:
    """Horizontal distance from ``xy`` (2,) to the walls of the bin centred at ``center`` (2,)."""
    d = np.abs(xy - center)
    if max(d) < BIN_HALF:
        return float(BIN_HALF - max(d))
    return float(np.linalg.norm(np.maximum(d - BIN_HALF - 2 * BIN_WALL[0], 0.0)))


def over(pos: np.ndarray, z: float) -> np.ndarray:
    return np.array([pos[0], pos[1], z])


class PickPlaceDemonstrator(Demonstrator):
    """Above the cube, down, close, lift, over the bin, down, open, up.

    Failures: ``missed_grasp`` aims 3 cm beside the cube, ``drop`` opens the gripper halfway
    to the bin, ``knock`` sets the cube sliding a few centimetres just before the grasp. The
    demonstrator notices (fingers closed on nothing, cube not between the fingers, cube moved) and
    replans from the current state; the recovery frames are labelled as corrections.
    """

    FAILURES = ("missed_grasp", "drop", "knock")
    task: PickPlace
    initial_fix = ""  # a corrective instruction for the first move (a takeover's recovery)

    def __init__(self, env: SimEnv, rng: np.random.Generator, failure_prob: float = 0.0) -> None:
        super().__init__(env, rng, failure_prob)
        self._injected = False  # whether self.failure has happened yet

    def script(self) -> Iterator[Step]:
        above, grasp, lift, carry, release = self.task.phases()
        color, fix = self.task.color, self.initial_fix
        while True:
            cube = self.task.cube_pos(color)
            yaw = self._grasp_yaw(cube)
            aim = cube + self._miss_offset(cube, yaw) if self._inject("missed_grasp") else cube
            labels = Labels(above, fix, correction=bool(fix))
            yield from self.move(over(aim, ABOVE_Z), labels, yaw=yaw, grip=GRIPPER_OPEN)
            if self._inject("knock"):
                self.task.push(color, self._knock_velocity(cube))
                yield from self.wait(0.4, Labels(above))
            if np.linalg.norm((self.task.cube_pos(color) - cube)[:2]) > 0.01:
                fix = self._towards_cube(fallback=f"move above the {color} cube")
                continue
            fix = ""
            yield from self.move(over(aim, GRASP_Z), Labels(grasp))
            yield from self.settle(Labels(grasp))
            yield from self.move(self._pos, Labels(grasp), grip=GRIPPER_CLOSED)
            yield from self.wait(0.2, Labels(grasp))
            if not self.task.holding(color):
                retry = Labels(grasp, "open the gripper and retry", correction=True)
                yield from self.move(over(self._pos, ABOVE_Z), retry, grip=GRIPPER_OPEN)
                fix = self._towards_cube(fallback=retry.corrective_instruction)
                continue
            yield from self.move(over(self._pos, CARRY_Z), Labels(lift))
            fix = yield from self._carry_and_release(color, carry, release)
            if fix is None:
                break
        yield from self.hold(Labels(release))

    def _carry_and_release(
        self, color: str, carry: str, release: str
    ) -> Generator[Step, None, str | None]:
        """Carry the held cube over the bin (opening on the way when a drop is injected) and
        release it; returns None once it is in the bin, else the next corrective instruction."""
        bin_pos = self.task.bin_pos()
        if self._inject("drop"):
            drop = self._drop_point(self._pos, bin_pos)
            yield from self.move(drop, Labels(carry), yaw=arm_yaw(drop, roll=self._q[4]))
            yield from self.open_gripper(Labels(carry))
            yield from self.wait(0.3, Labels(carry))
        else:
            goal = over(bin_pos, CARRY_Z)
            yield from self.move(goal, Labels(carry), yaw=arm_yaw(goal, roll=self._q[4]))
        if not self.task.holding(color):
            return "pick up the dropped cube"
        yield from self.move(over(bin_pos, RELEASE_Z), Labels(release))
        yield from self.open_gripper(Labels(release))
        yield from self.move(over(bin_pos, ABOVE_Z), Labels(release))
        return None if self.task.success() else "pick up the dropped cube"

    def _inject(self, kind: str) -> bool:
        """True once, at the first chance to inject this episode's failure ``kind``."""
        if self.failure != kind or self._injected:
            return False
        self._injected = True
        return True

    def _towards_cube(self, fallback: str) -> str:
        """Words towards the cube ("move left", ...), or ``fallback`` if already above it."""
        return words_towards_cube(self.task, self.site_pos(), fallback)

    def _others(self) -> list[np.ndarray]:
        """Horizontal positions of the distractor cubes."""
        return [self.task.cube_pos(c)[:2] for c in COLORS if c != self.task.color]

    def _clearance(self, points: list[np.ndarray]) -> float:
        """Smallest horizontal distance from ``points`` to a distractor cube or a bin wall."""
        return clearance(self.task, points)

    def _grasp_yaw(self, cube: np.ndarray) -> float:
        """Closing-axis yaw for a grasp: along a pair of faces, fingers clear of distractors,
        and with a small wrist roll (so the wrist never runs into its joint limit)."""
        face = self.task.cube_axis_yaw(self.task.color)
        pan = math.atan2(cube[1], cube[0])

        def roll(axis: float) -> float:  # the gripper is symmetric: roll in [-pi/2, pi/2)
            return (pan - axis + np.pi) % np.pi - np.pi / 2

        def score(axis: float) -> float:
            u = FINGER_REACH * np.array([np.cos(axis), np.sin(axis)])
            clear = self._clearance([cube[:2] + u, cube[:2] - u])
            return min(clear, 0.04) - 0.005 * abs(roll(axis))

        return arm_yaw(cube, roll(max((face, face + np.pi / 2), key=score)))

    def _miss_offset(self, cube: np.ndarray, yaw: float) -> np.ndarray:
        """3.2 cm beside the cube, across the closing axis, on the side clear of distractors."""
        across = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        offsets = [0.032 * across, -0.032 * across]
        return max(offsets, key=lambda o: self._clearance([(cube + o)[:2]]))

    def _knock_velocity(self, cube: np.ndarray) -> np.ndarray:
        """A sliding velocity (3,) that moves the cube about 4 cm to a free spot."""
        angles = self.rng.permutation(np.linspace(0, 2 * np.pi, 12, endpoint=False))

        def score(a: float) -> float:
            end = cube[:2] + 0.04 * np.array([np.cos(a), np.sin(a)])
            return min(self._clearance([end]), 0.08) + 0.1 * in_workspace(end)

        a = max(angles, key=score)
        speed = slide_speed(0.04)
        return speed * np.array([np.cos(a), np.sin(a), 0.0])

    def _drop_point(self, start: np.ndarray, bin_pos: np.ndarray) -> np.ndarray:
        """A point on the way to the bin, over free table, where the cube is let go."""
        goal = over(bin_pos, CARRY_Z)

        def score(f: float) -> float:
            return min(self._clearance([(start + f * (goal - start))[:2]]), 0.06)

        f = max(self.rng.permutation([0.2, 0.3, 0.4, 0.5, 0.6]), key=score)
        return start + f * (goal - start)
