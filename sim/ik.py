"""Differential inverse kinematics for the grip site, on MuJoCo Jacobians.

The demonstrators steer the ``grip`` site (between the finger pads) with the gripper pointing
straight down. The 5-DoF arm can reach that orientation with any yaw about the vertical, so
the target is a full rotation: ``down_rotation(yaw)``, where ``yaw`` is the direction of the
fingers' closing axis in the table plane.
"""

from __future__ import annotations

import mujoco
import numpy as np

from sim.robot import ARM_JOINTS, RobotIndex


def down_rotation(yaw: float) -> np.ndarray:
    """Rotation (3, 3) of the hand pointing down, closing axis at ``yaw`` (rad) in the plane.

    Columns are the hand's axes in the world: x along the fingers (down), y the closing axis.
    """
    x = np.array([0.0, 0.0, -1.0])
    y = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    return np.column_stack([x, y, np.cross(x, y)])


def closing_yaw(rot: np.ndarray) -> float:
    """Yaw (rad) of the closing axis (the hand's y column) of a rotation (3, 3)."""
    return float(np.arctan2(rot[1, 1], rot[0, 1]))


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Small-angle rotation vector (3,) that turns ``current`` towards ``target`` (both (3, 3))."""
    return 0.5 * np.cross(current.T, target.T).sum(axis=0)


def min_jerk(s: float) -> float:
    """Minimum-jerk time scaling: 0 -> 0, 1 -> 1, zero velocity and acceleration at both ends."""
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


class DiffIK:
    """Damped least squares on the grip site's position and orientation Jacobians.

    Works on a private ``MjData`` so solving never disturbs the simulation. Only the five arm
    joints move; the solution stays inside the joint ranges.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        index: RobotIndex,
        damping: float = 0.02,  # lambda of DLS, in metres: limits steps near singularities
        rot_weight: float = 0.1,  # metres per radian: how much orientation counts vs position
        iterations: int = 30,
        tolerance: float = 1e-4,  # stop once the weighted error norm is below this
    ) -> None:
        self._model = model
        self._data = mujoco.MjData(model)
        self._qpos = index.qpos[:5]
        self._dof = index.dof[:5]
        self._site = index.grip_site
        self._low, self._high = model.jnt_range[[model.joint(n).id for n in ARM_JOINTS]].T
        self._damping, self._rot_weight = damping, rot_weight
        self._iterations, self._tolerance = iterations, tolerance
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grip site position (3,) and rotation (3, 3) at arm joint angles ``q`` (5,)."""
        self._data.qpos[self._qpos] = q
        mujoco.mj_kinematics(self._model, self._data)
        mujoco.mj_comPos(self._model, self._data)
        site = self._data.site(self._site)
        return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    def solve(self, q: np.ndarray, pos: np.ndarray, rot: np.ndarray | None = None) -> np.ndarray:
        """Arm joint angles (5,) that put the grip site at ``pos`` (3,) with rotation ``rot``.

        Starts from ``q`` (5,), the previous solution, so consecutive targets give a smooth
        joint path. ``rot=None`` solves for position only.
        """
        q = np.clip(np.asarray(q, dtype=float).copy(), self._low, self._high)
        for _ in range(self._iterations):
            cur_pos, cur_rot = self.forward(q)
            mujoco.mj_jacSite(self._model, self._data, self._jacp, self._jacr, self._site)
            err = pos - cur_pos  # (3,)
            jac = self._jacp[:, self._dof]  # (3, 5)
            if rot is not None:
                err = np.r_[err, self._rot_weight * rotation_error(cur_rot, rot)]  # (6,)
                jac = np.vstack([jac, self._rot_weight * self._jacr[:, self._dof]])  # (6, 5)
            if np.linalg.norm(err) < self._tolerance:
                break
            lhs = jac @ jac.T + self._damping**2 * np.eye(len(err))
            q = np.clip(q + jac.T @ np.linalg.solve(lhs, err), self._low, self._high)
        return q
