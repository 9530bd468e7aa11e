"""lerobot's SO-100/SO-101 follower conventions: the one place the sim converts to and from them.

The physics inside ``SimEnv`` works in radians and metres (``sim.robot``). Everything that
leaves it (observations, actions, dataset features, the MuJoCo driver's limits) speaks as a real
follower does under lerobot's ``so101_follower`` with ``use_degrees=True`` (its default):

- joints named ``<motor>.pos`` (``shoulder_pan.pos``, ..., ``gripper.pos``);
- the five arm joints in degrees;
- the gripper from 0 (closed) to 100 (fully open, ``GRIPPER_FULL_OPEN`` m of finger opening).

So a sim dataset and one recorded on a real SO-101 have the same features and merge with
lerobot's ``aggregate_datasets``, and a sim-trained checkpoint drives ``driver=lerobot`` in the
units the arm reports. Both maps are per-joint scalings (no offsets): the sim's zero pose
(upper arm vertical, forearm pointing forward) is the kinematic zero, which a real arm's
calibration puts near, but not exactly at, the middle of each joint's range.
"""

from __future__ import annotations

import math

import numpy as np

from sim.robot import JOINT_NAMES

ROBOT_TYPE = "so101_follower"  # lerobot's robot class name, written into datasets' metadata
FEATURE_NAMES: tuple[str, ...] = tuple(f"{name}.pos" for name in JOINT_NAMES)
GRIPPER_FULL_OPEN = 0.035  # m of finger opening that reads 100
GRIPPER_RANGE = 100.0  # the follower's gripper reading at GRIPPER_FULL_OPEN

# (6,) follower units per SI unit: degrees per radian for the arm, 100 / 0.035 m for the gripper
SCALE = np.array([180.0 / math.pi] * (len(JOINT_NAMES) - 1) + [GRIPPER_RANGE / GRIPPER_FULL_OPEN])


def to_follower(q: np.ndarray) -> np.ndarray:
    """float32 (..., 6): joint positions in radians and metres -> follower units."""
    return (np.asarray(q, dtype=np.float64) * SCALE).astype(np.float32)


def from_follower(x: np.ndarray) -> np.ndarray:
    """float64 (..., 6): follower units -> radians and metres (``to_follower``'s inverse)."""
    return np.asarray(x, dtype=np.float64) / SCALE


def gripper(opening_m: float) -> float:
    """A finger opening in metres as the follower's 0-100 gripper reading."""
    return float(opening_m * SCALE[-1])
