"""An SO-100-class arm built from primitive geoms, with a table, lights and two cameras.

Frames: the robot base sits at the world origin on the table top (z = 0) and faces +x.
"Left" is +y, "forward" is +x, both as seen by the robot. All lengths are in metres.

Kinematics (zero pose: upper arm vertical, forearm and gripper pointing forward):

    shoulder_pan   hinge z at z = 0.05
    shoulder_lift  hinge y at z = 0.09   (positive tilts the upper arm forward)
    elbow_flex     hinge y, 0.11 m up the upper arm   (positive bends the forearm down)
    wrist_flex     hinge y, 0.13 m along the forearm  (positive bends the gripper down)
    wrist_roll     hinge x, 0.03 m after wrist_flex
    gripper        slide, the opening of each finger; a mirrored finger follows it through a
                   joint equality, so one actuator drives both. 0 = closed, 0.035 = fully open.

The gripper's tip is 0.1 m from the wrist_flex axis; the site ``grip`` sits between the finger
pads (0.08 m from the axis) and is the point the demonstrators steer.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
ARM_JOINTS = JOINT_NAMES[:5]
GRIP_SITE = "grip"
CAMERAS: tuple[str, ...] = ("front", "wrist")

GRIPPER_OPEN = 0.03  # finger opening commanded to approach an object (6 cm between pads)
GRIPPER_CLOSED = 0.0  # commanded to grasp; the fingers stop on the object

# Contact groups: scene objects collide with everything, robot geoms with scene objects only.
SCENE_CONTYPE, ROBOT_CONTYPE, NO_CONTACT = 1, 2, 0

# (name, range in rad or m, kp, armature)
_JOINTS: tuple[tuple[str, tuple[float, float], float, float], ...] = (
    ("shoulder_pan", (-2.0, 2.0), 40.0, 0.01),
    ("shoulder_lift", (-1.7, 1.7), 40.0, 0.01),
    ("elbow_flex", (-1.6, 1.7), 30.0, 0.01),
    ("wrist_flex", (-2.0, 2.0), 15.0, 0.005),
    ("wrist_roll", (-2.9, 2.9), 10.0, 0.005),
    ("gripper", (0.0, 0.035), 300.0, 0.01),
)
_GRIP_FORCE = 8.0  # N, cap of the gripper actuator: enough to hold a 3 cm cube, no crushing

_ARM_RGBA = (0.95, 0.55, 0.15, 1.0)
_DARK_RGBA = (0.15, 0.15, 0.17, 1.0)


@dataclass(frozen=True)
class RobotIndex:
    """Addresses of the robot's joints, actuators and sites in a compiled model."""

    qpos: np.ndarray  # int (6,) qpos address of each joint in JOINT_NAMES
    dof: np.ndarray  # int (6,) dof address of each joint in JOINT_NAMES
    actuators: np.ndarray  # int (6,) actuator id for each joint in JOINT_NAMES
    grip_site: int

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> RobotIndex:
        joints = [model.joint(n) for n in JOINT_NAMES]
        return cls(
            qpos=np.array([j.qposadr[0] for j in joints]),
            dof=np.array([j.dofadr[0] for j in joints]),
            actuators=np.array([model.actuator(n).id for n in JOINT_NAMES]),
            grip_site=model.site(GRIP_SITE).id,
        )


def look_at_quat(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of a camera at ``eye`` looking at ``target`` with ``up`` up.

    MuJoCo cameras look along their local -z with local +y up in the image.
    """
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([x, y, z]).ravel())
    return quat


def _geom(body: mujoco.MjsBody, kind: mujoco.mjtGeom, rgba: tuple[float, ...], **kw) -> None:
    """A robot geom: collides with scene objects, not with the robot itself."""
    body.add_geom(type=kind, rgba=rgba, contype=ROBOT_CONTYPE, conaffinity=SCENE_CONTYPE, **kw)


def _add_arm(world: mujoco.MjsBody) -> None:
    box, cap, cyl = (
        mujoco.mjtGeom.mjGEOM_BOX,
        mujoco.mjtGeom.mjGEOM_CAPSULE,
        mujoco.mjtGeom.mjGEOM_CYLINDER,
    )
    hinge, slide = mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE
    spec = {name: (rng, arm) for name, rng, _, arm in _JOINTS}

    def joint(body: mujoco.MjsBody, name: str, kind, axis) -> None:
        rng, armature = spec[name]
        body.add_joint(name=name, type=kind, axis=axis, range=rng, armature=armature, damping=0.1)

    base = world.add_body(name="base")
    _geom(base, cyl, _DARK_RGBA, size=[0.045, 0.025, 0], pos=[0, 0, 0.025])

    shoulder = base.add_body(name="shoulder", pos=[0, 0, 0.05], gravcomp=1)
    joint(shoulder, "shoulder_pan", hinge, [0, 0, 1])
    _geom(shoulder, box, _ARM_RGBA, size=[0.025, 0.025, 0.02], pos=[0, 0, 0.02])

    upper = shoulder.add_body(name="upper_arm", pos=[0, 0, 0.04], gravcomp=1)
    joint(upper, "shoulder_lift", hinge, [0, 1, 0])
    _geom(upper, cap, _ARM_RGBA, size=[0.017, 0, 0], fromto=[0, 0, 0, 0, 0, 0.11])

    forearm = upper.add_body(name="forearm", pos=[0, 0, 0.11], gravcomp=1)
    joint(forearm, "elbow_flex", hinge, [0, 1, 0])
    _geom(forearm, cap, _ARM_RGBA, size=[0.015, 0, 0], fromto=[0, 0, 0, 0.13, 0, 0])

    wrist = forearm.add_body(name="wrist", pos=[0.13, 0, 0], gravcomp=1)
    joint(wrist, "wrist_flex", hinge, [0, 1, 0])
    _geom(wrist, cap, _DARK_RGBA, size=[0.014, 0, 0], fromto=[0, 0, 0, 0.02, 0, 0])

    hand = wrist.add_body(name="hand", pos=[0.03, 0, 0], gravcomp=1)
    joint(hand, "wrist_roll", hinge, [1, 0, 0])
    _geom(hand, box, _ARM_RGBA, size=[0.013, 0.045, 0.014], pos=[0.013, 0, 0])
    hand.add_site(name=GRIP_SITE, pos=[0.05, 0, 0], size=[0.004, 0, 0], rgba=[1, 1, 1, 0])
    # Looks over the palm along the fingers; image up is the hand's +z (forward at home).
    eye = np.array([0.024, 0.0, -0.032])
    hand.add_camera(
        name="wrist",
        pos=eye,
        quat=look_at_quat(eye, np.array([0.1, 0.0, 0.0]), np.array([0, 0, 1.0])),
        fovy=75,
    )

    for side, sign, name in (("left", 1.0, "gripper"), ("right", -1.0, "gripper_mirror")):
        finger = hand.add_body(name=f"finger_{side}", gravcomp=1)
        rng, armature = spec["gripper"]
        finger.add_joint(
            name=name, type=slide, axis=[0, sign, 0], range=rng, armature=armature, damping=1.0
        )
        # One box per finger, inner face at y = +-opening. High friction, soft contact and
        # torsional friction (condim 4) so a held cube neither slips nor spins.
        _geom(
            finger, box, _DARK_RGBA, name=f"finger_{side}",
            size=[0.021, 0.004, 0.011], pos=[0.049, sign * 0.004, 0],
            condim=4, friction=[1.5, 0.02, 0.001], priority=1,
        )  # fmt: skip


def build_scene(timestep: float) -> mujoco.MjSpec:
    """The robot on a table with lights and the ``front`` camera; tasks add their objects."""
    spec = mujoco.MjSpec()
    spec.modelname = "so100_scene"
    spec.compiler.degree = False
    spec.option.timestep = timestep
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    spec.visual.quality.offsamples = 0
    spec.visual.quality.shadowsize = 0
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]

    world = spec.worldbody
    world.add_geom(
        name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[0.6, 0.6, 0.05],
        rgba=[0.55, 0.5, 0.45, 1], friction=[0.7, 0.005, 0.0001],
        contype=SCENE_CONTYPE, conaffinity=SCENE_CONTYPE,
    )  # fmt: skip
    world.add_light(pos=[0.2, 0, 1.0], dir=[0, 0, -1], diffuse=[0.5, 0.5, 0.5], castshadow=False)
    eye, target = np.array([0.45, 0.0, 0.45]), np.array([0.09, 0.0, 0.03])
    world.add_camera(
        name="front", pos=eye, quat=look_at_quat(eye, target, np.array([0, 0, 1.0])), fovy=50
    )
    _add_arm(world)

    for name, _, kp, _ in _JOINTS:
        act = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=kp, dampratio=1.0, inheritrange=True)
        if name == "gripper":
            act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
            act.forcerange = [-_GRIP_FORCE, _GRIP_FORCE]
    spec.add_equality(
        type=mujoco.mjtEq.mjEQ_JOINT, name1="gripper_mirror", name2="gripper",
        data=np.r_[0.0, 1.0, np.zeros(10)],
    )  # fmt: skip
    return spec
