"""The simulated SO-100 environment: one task, fixed-rate control ticks, camera observations.

Observations (``observe``):
    observation.state              float32 (6,)     joint positions (``sim.units.FEATURE_NAMES``)
                                                    in lerobot's SO-101 follower units: arm
                                                    joints in degrees, gripper 0 (closed) to 100
    observation.environment_state  float32 (n,)     the task's scene state (object poses, see
                                                    ``Task.environment_state``); n per task;
                                                    with grip_state=True the grip site's
                                                    position (m) follows: grip.x, grip.y, grip.z
    observation.images.<cam>       uint8 (H, W, 3)  one per camera, absent when render=False

Actions (``step``): float32 (6,) absolute joint targets in the same order and units, clipped to
the actuators' ctrlrange (``action_low``/``action_high``, also in follower units). One step is
one control tick of ``n_substeps`` physics steps. The physics works in radians and metres;
``sim.units`` converts at this boundary and nowhere else.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import mujoco
import numpy as np

from sim.ik import DiffIK, down_rotation
from sim.render import CameraRenderer
from sim.robot import CAMERAS, GRIPPER_OPEN, JOINT_NAMES, RobotIndex, build_scene
from sim.tasks import TASKS, Task, make_demonstrator
from sim.tasks.base import CONTROL_HZ_REF
from sim.units import FEATURE_NAMES, from_follower, to_follower

logger = logging.getLogger(__name__)

MAX_TIMESTEP = 0.002  # s, the physics step never exceeds this
HOME_SITE = np.array([0.15, 0.0, 0.12])  # grip site at home: above the workspace, pointing down
HOME_NOISE = 0.03  # rad, uniform noise on the arm joints at reset
GRIPPER_NOISE_SCALE = 0.1  # m per rad: action noise on the gripper, relative to the joints'

# Observation keys, as lerobot names them (lerobot.utils.constants, too heavy to import here).
STATE = "observation.state"
ENV_STATE = "observation.environment_state"
GRIP_NAMES = ("grip.x", "grip.y", "grip.z")  # environment_state's tail with grip_state=True
IMAGES = "observation.images."  # prefix of the camera keys: observation.images.<cam>


class SimEnv:
    """A MuJoCo scene with the SO-100-class arm and one task."""

    def __init__(
        self,
        task: Task | str,
        *,
        image_size: int = 96,
        control_hz: float = 30.0,
        cameras: tuple[str, ...] = CAMERAS,
        render: bool = True,
        action_noise: float = 0.0,
        grip_state: bool = False,
    ) -> None:
        """grip_state: append the grip site's position to the scene state, so that a state
        policy reads where the fingers are instead of computing it from the joint angles.
        action_noise: std (rad) of Gaussian noise added to every executed joint target,
        drawn from the episode's seed, so that closed-loop correction matters (as the RTC
        paper's Kinetix tasks add); the gripper's opening (m, range 0-0.035) gets
        GRIPPER_NOISE_SCALE times it (0.02 rad -> 2 mm), so that noise perturbs grasps without
        opening a closed gripper."""
        if isinstance(task, str):
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}: choose one of {sorted(TASKS)}")
            task = TASKS[task]()
        if not isinstance(image_size, int | np.integer) or not 16 <= image_size <= 1024:
            raise ValueError(f"image_size={image_size!r} must be an int in 16..1024, e.g. 96")
        if not 0 < control_hz <= 1 / MAX_TIMESTEP:
            raise ValueError(
                f"control_hz={control_hz} must be > 0 and <= {1 / MAX_TIMESTEP:g}, e.g. 30"
            )
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(
                f"cameras={cameras!r} must be distinct names from {CAMERAS}, at least one"
            )
        if not 0.0 <= action_noise < 1.0:
            raise ValueError(f"action_noise={action_noise} must be in [0, 1) (a std in rad)")
        if not isinstance(grip_state, bool | np.bool_):
            raise ValueError(f"grip_state={grip_state!r} must be true or false")
        self.task = task
        self.action_noise = float(action_noise)
        self.grip_state = bool(grip_state)
        self._noise = np.random.default_rng(0)
        self.image_size = int(image_size)
        self.control_hz = float(control_hz)
        self.cameras = tuple(cameras)
        period = 1.0 / self.control_hz
        self.n_substeps = math.ceil(period / MAX_TIMESTEP - 1e-9)

        spec = build_scene(timestep=period / self.n_substeps)
        task.build(spec)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.robot = RobotIndex.from_model(self.model)
        task.bind(self.model, self.data)
        low, high = self.model.actuator_ctrlrange[self.robot.actuators].T  # rad and m
        self._ctrlrange = (low, high)
        self.action_low, self.action_high = to_follower(low), to_follower(high)
        self._mirror_qpos = self.model.joint("gripper_mirror").qposadr[0]
        ik = DiffIK(self.model, self.robot)
        seed = np.array([0.0, 0.0, 0.0, math.pi / 2, 0.0])
        self._home = np.r_[ik.solve(seed, HOME_SITE, down_rotation(math.pi / 2)), GRIPPER_OPEN]
        self._renderer = CameraRenderer(self.model, image_size) if render else None
        self.instruction = ""
        self.tick = 0
        self.reset()

    @property
    def max_steps(self) -> int:
        """Episode cap in control ticks (the task's cap, rescaled from 30 Hz)."""
        return round(self.task.max_steps * self.control_hz / CONTROL_HZ_REF)

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Home the robot (with small joint noise), randomize the task; return the observation."""
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        home = self._home.copy()
        home[:5] += rng.uniform(-HOME_NOISE, HOME_NOISE, size=5)
        self.data.qpos[self.robot.qpos] = home
        self.data.qpos[self._mirror_qpos] = home[5]
        self.data.ctrl[self.robot.actuators] = home
        self.instruction = self.task.reset(rng)
        self._noise = np.random.default_rng(rng.integers(2**63))
        mujoco.mj_forward(self.model, self.data)
        self.tick = 0
        return self.observe()

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Apply absolute joint targets ``action`` (6,), in follower units, for one control tick."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (len(JOINT_NAMES),):
            raise ValueError(
                f"action has shape {action.shape}, expected ({len(JOINT_NAMES)},): "
                f"absolute joint targets for {FEATURE_NAMES}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action {action} has non-finite values")
        action = np.clip(action, self.action_low, self.action_high)
        action = from_follower(action)  # (6,) rad and m
        if self.action_noise > 0:
            scale = np.ones_like(action)
            scale[JOINT_NAMES.index("gripper")] = GRIPPER_NOISE_SCALE
            action = action + scale * self._noise.normal(0.0, self.action_noise, size=action.shape)
        self.data.ctrl[self.robot.actuators] = np.clip(action, *self._ctrlrange)
        self.task.advance(1.0 / self.control_hz)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.task.after_step()
        self.tick += 1
        return self.observe()

    def observe(self) -> dict[str, np.ndarray]:
        """Joint positions, the scene state and (when rendering) one image per camera."""
        scene = self.task.environment_state()
        if self.grip_state:
            grip = self.data.site_xpos[self.robot.grip_site]
            scene = np.concatenate([scene, grip], dtype=np.float32)
        obs = {STATE: to_follower(self.data.qpos[self.robot.qpos]), ENV_STATE: scene}
        if self._renderer is not None:
            for cam in self.cameras:
                obs[IMAGES + cam] = self._renderer.render(self.data, cam)
        return obs

    def render_camera(self, camera: str) -> np.ndarray:
        """uint8 (H, W, 3): what ``camera`` (any of ``CAMERAS``) sees now; needs render=True."""
        if self._renderer is None:
            raise ValueError("this SimEnv was made with render=False: it renders no camera")
        return self._renderer.render(self.data, camera)

    def grip_positions(self, states: np.ndarray) -> np.ndarray:
        """Grip-site positions (T, 3) in m for joint states (T, 6) in follower units, e.g. an
        episode log's ``observation.state`` (forward kinematics; moves the arm to the last)."""
        out = np.empty((len(states), 3))
        for t, q in enumerate(from_follower(np.asarray(states))):
            self.data.qpos[self.robot.qpos] = q
            mujoco.mj_kinematics(self.model, self.data)
            out[t] = self.data.site_xpos[self.robot.grip_site]
        return out

    def success(self) -> bool:
        return self.task.success()

    def outcome(self) -> tuple[float, str | None]:
        """(distance to the goal in m, failure class or None): ``Task.outcome``."""
        return self.task.outcome()

    def feature_spec(self) -> dict[str, dict[str, Any]]:
        """LeRobot-style features of observations and actions."""
        features: dict[str, dict[str, Any]] = {
            key: {"dtype": "float32", "shape": (len(FEATURE_NAMES),), "names": list(FEATURE_NAMES)}
            for key in (STATE, "action")
        }
        names = self.task.environment_names()
        if self.grip_state:
            names = [*names, *GRIP_NAMES]
        features[ENV_STATE] = {"dtype": "float32", "shape": (len(names),), "names": names}
        if self._renderer is not None:
            for cam in self.cameras:
                features[IMAGES + cam] = {
                    "dtype": "image",
                    "shape": (self.image_size, self.image_size, 3),
                    "names": ["height", "width", "channels"],
                }
        return features

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_env(task: str, **kwargs: Any) -> SimEnv:
    """``SimEnv(task, **kwargs)``."""
    return SimEnv(task, **kwargs)


def evaluate_demonstrator(
    task: str, episodes: int, failure_prob: float = 0.0, seed: int = 0, action_noise: float = 0.0
) -> dict[str, float | int]:
    """Run the scripted demonstrator for ``episodes`` seeded episodes without rendering.

    Episode ``i`` resets with seed ``seed + i``. Returns the success rate, how many episodes
    had a failure injected, how many of those still succeeded, and the mean episode length.
    """
    env = SimEnv(task, render=False, action_noise=action_noise)
    successes = injected = recovered = total_ticks = 0
    for i in range(episodes):
        env.reset(seed=seed + i)
        demonstrator = make_demonstrator(env, np.random.default_rng((seed, i)), failure_prob)
        while not demonstrator.done:
            env.step(demonstrator.act()[0])
        ok = env.success()
        successes += ok
        injected += demonstrator.failure is not None
        recovered += ok and demonstrator.failure is not None
        total_ticks += env.tick
        logger.debug(
            "episode %d: success=%s failure=%s ticks=%d", i, ok, demonstrator.failure, env.tick
        )
    env.close()
    return {
        "episodes": episodes,
        "success_rate": successes / max(episodes, 1),
        "failures_injected": injected,
        "recovered": recovered,
        "mean_episode_ticks": total_ticks / max(episodes, 1),
    }
