"""Any lerobot robot as a driver: an SO-100/SO-101 follower, a Koch arm, or your own ``Robot``.

A lerobot robot speaks in flat dicts (``{"shoulder_pan.pos": 12.5, ..., "front": image}``)
described by its ``observation_features`` and ``action_features``; this driver maps them onto
vectors and back:

- every float observation feature, in the robot's order -> ``observation.state`` (S,);
- every (H, W, 3) observation feature ``<cam>`` -> ``observation.images.<cam>``;
- every float action feature, in the robot's order <-> ``action`` (A,).

Units are the robot's own. For motors on a lerobot ``MotorsBus`` they follow each motor's
``MotorNormMode``: SO-100/SO-101 followers report their arm joints in degrees from the middle of
the calibrated range (``use_degrees=True``, lerobot's default) or as the calibrated range mapped
onto -100..100 (``use_degrees=False``), and the gripper as its calibrated range mapped onto
0..100. ``UNIT_LIMITS`` gives default action limits for each unit; the motors' own position
limits, written at calibration, still apply underneath.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from lerobot.motors import MotorNormMode
from lerobot.robots import Robot, RobotConfig, make_robot_from_config

from runtime.robot.drivers.base import ActionLimits, DriverContext, Observation
from runtime.wire.keys import ACTION, IMAGES, STATE

# Default limits per motor unit: (low, high, speed per second); max_delta = speed / control_hz.
UNIT_LIMITS: dict[MotorNormMode, tuple[float, float, float]] = {
    MotorNormMode.DEGREES: (-180.0, 180.0, 90.0),  # a full turn either way, 90 deg/s
    MotorNormMode.RANGE_M100_100: (-100.0, 100.0, 90.0),  # ~90 deg/s on an SO-101 arm joint
    MotorNormMode.RANGE_0_100: (0.0, 100.0, 150.0),  # a full gripper stroke in 0.67 s
}

# A limit for every joint (scalar), one per joint (sequence), or some joints by name (mapping,
# keyed by action name, "shoulder_pan.pos", or motor name, "shoulder_pan"); None: the default.
Limit = float | Sequence[float] | Mapping[str, float] | None


class LerobotDriver(DriverContext):
    """Drives a lerobot ``Robot`` (or the one lerobot's factory builds from a ``RobotConfig``)."""

    def __init__(
        self,
        robot: Robot | RobotConfig,
        *,
        low: Limit = None,
        high: Limit = None,
        max_delta: Limit = None,
        control_hz: float = 30.0,
        calibrate: bool = True,
    ) -> None:
        """``low``, ``high``, ``max_delta`` (per control tick, at ``control_hz``) override the
        defaults of ``UNIT_LIMITS``; ``calibrate`` is passed to ``robot.connect``."""
        self.robot = make_robot_from_config(robot) if isinstance(robot, RobotConfig) else robot
        if not isinstance(self.robot, Robot):
            raise TypeError(
                f"LerobotDriver needs a lerobot Robot or RobotConfig, got {type(robot).__name__}"
            )
        self.calibrate = calibrate
        self._joints, self._cameras = _observation_keys(self.robot)
        self._actions = _action_keys(self.robot)
        self._limits = _limits(self.robot, self._actions, low, high, max_delta, control_hz)

    def connect(self) -> None:
        if not self.robot.is_connected:
            self.robot.connect(calibrate=self.calibrate)

    def observe(self) -> Observation:
        raw = self.robot.get_observation()
        missing = [k for k in (*self._joints, *self._cameras) if k not in raw]
        if missing:
            raise KeyError(
                f"{self.robot} returned an observation without {missing}, which its "
                "observation_features declare: fix the robot's get_observation"
            )
        obs = {STATE: np.array([raw[k] for k in self._joints], dtype=np.float32)}  # (S,)
        for cam, shape in self._cameras.items():
            image = np.asarray(raw[cam])
            if image.shape != shape or image.dtype != np.uint8:
                raise ValueError(
                    f"{self.robot}'s camera {cam!r} returned a {image.dtype} image of shape "
                    f"{image.shape}, its observation_features declare uint8 {shape}: check the "
                    "camera's width, height and color mode in the robot config"
                )
            obs[IMAGES + cam] = image
        return obs

    def act(self, action: np.ndarray) -> None:
        action = self._limits.check(action)
        self.robot.send_action(dict(zip(self._actions, action.tolist(), strict=True)))

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def feature_spec(self) -> dict[str, dict]:
        spec = {STATE: {"dtype": "float32", "shape": (len(self._joints),), "names": self._joints}}
        for cam, shape in self._cameras.items():
            names = ["height", "width", "channels"]
            spec[IMAGES + cam] = {"dtype": "image", "shape": shape, "names": names}
        spec[ACTION] = {"dtype": "float32", "shape": (len(self._actions),), "names": self._actions}
        return spec

    def limits(self) -> ActionLimits:
        return self._limits


def _observation_keys(robot: Robot) -> tuple[list[str], dict[str, tuple[int, int, int]]]:
    """The robot's joint keys (floats) and camera keys with their (H, W, 3) shapes."""
    joints, cameras = [], {}
    for key, feature in robot.observation_features.items():
        if feature is float:
            joints.append(key)
        elif isinstance(feature, tuple) and len(feature) == 3 and feature[2] == 3:
            cameras[key] = tuple(int(n) for n in feature)
        else:
            raise ValueError(
                f"{robot.name}'s observation feature {key!r} is {feature!r}; LerobotDriver maps "
                "only float (a joint) and (H, W, 3) (an RGB camera): turn it off in the robot "
                "config (e.g. a depth stream) or write a driver for this robot"
            )
    return joints, cameras


def _action_keys(robot: Robot) -> list[str]:
    actions = list(robot.action_features)
    bad = {k: v for k, v in robot.action_features.items() if v is not float}
    if bad or not actions:
        raise ValueError(
            f"{robot.name}'s action_features {robot.action_features} cannot form an action "
            f"vector: LerobotDriver needs at least one and all float, not {bad}"
        )
    return actions


def _limits(
    robot: Robot, names: list[str], low: Limit, high: Limit, max_delta: Limit, control_hz: float
) -> ActionLimits:
    defaults = np.full((3, len(names)), np.nan)  # (low, high, max_delta) x (A,)
    motors = getattr(getattr(robot, "bus", None), "motors", {})
    for i, name in enumerate(names):
        motor = motors.get(name.removesuffix(".pos"))
        if motor is not None and motor.norm_mode in UNIT_LIMITS:
            lo, hi, speed = UNIT_LIMITS[motor.norm_mode]
            defaults[:, i] = lo, hi, speed / control_hz
    given = [
        _per_joint(value, names, default, field)
        for value, default, field in zip(
            (low, high, max_delta), defaults, ("low", "high", "max_delta"), strict=True
        )
    ]
    unset = [
        n for n, column in zip(names, np.stack(given).T, strict=True) if np.isnan(column).any()
    ]
    if unset:
        raise ValueError(
            f"no default action limits for {unset} of {robot.name} (defaults exist for motors "
            "on a lerobot MotorsBus only): pass low, high and max_delta for them"
        )
    return ActionLimits(low=given[0], high=given[1], max_delta=given[2], names=tuple(names))


def _per_joint(value: Limit, names: list[str], default: np.ndarray, field: str) -> np.ndarray:
    """``value`` (see ``Limit``) as one float per joint, ``default`` where it says nothing."""
    if value is None:
        return default
    if isinstance(value, Mapping):
        out = default.copy()
        for key, v in value.items():
            hits = [i for i, n in enumerate(names) if key in (n, n.removesuffix(".pos"))]
            if not hits:
                raise ValueError(f"{field} names an unknown joint {key!r}; the joints are {names}")
            out[hits] = v
        return out
    out = np.asarray(value, dtype=np.float64)
    if out.ndim == 0:
        return np.full(len(names), float(out))
    if out.shape != (len(names),):
        raise ValueError(f"{field} has {out.size} values, expected one per joint of {names}")
    return out
