"""The simulated tasks as gymnasium environments: ``rtvla/Reach-v0``, ``rtvla/PickPlace-v0``,
``rtvla/Track-v0``, registered when this module is imported (gymnasium takes seconds to
import, so ``import sim`` does not do it)::

    import gymnasium as gym
    env = gym.make("sim.envs:rtvla/PickPlace-v0")   # imports sim.envs, then makes the env
    obs, info = env.reset(seed=1000)                # info["task"]: the instruction

Spaces match the dataset features ``rtvla record`` writes (``SimEnv.feature_spec``): a Dict
of ``observation.state`` (6,) and ``observation.environment_state`` (n,) float32, and one
``observation.images.<cam>`` uint8 (H, W, 3) per camera; actions are absolute joint targets,
float32 (6,), within the actuators' ranges. Reward is sparse: 1 on the tick the task
succeeds (the episode then terminates), else 0; an episode that reaches the task's
``max_steps`` without success is truncated (track judges success on the last tick of its
8 s run, so a successful track episode terminates there). ``info`` holds ``is_success``
(what lerobot's evaluation reads) and ``task`` (the episode's instruction). ``render()``
returns the front camera (``rgb_array``).

Seeding follows gymnasium: ``reset(seed=s)`` seeds the environment's generator and starts
the scene ``SimEnv.reset(seed=s)`` draws (the scene ``rtvla eval`` runs for episode seed s);
``reset()`` with no seed draws the next scene's seed from that generator, so a sequence of
resets after one seeded reset repeats exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.env import IMAGES, SimEnv
from sim.robot import CAMERAS

ENV_IDS = {"reach": "rtvla/Reach-v0", "pick_place": "rtvla/PickPlace-v0",
           "track": "rtvla/Track-v0"}  # fmt: skip
RENDER_CAMERA = "front"


class SimGymEnv(gym.Env):
    """A ``SimEnv`` task behind gymnasium's API (module docstring)."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str,
        *,
        cameras: tuple[str, ...] = CAMERAS,
        image_size: int = 96,
        control_hz: float = 30.0,
        action_noise: float = 0.0,
        grip_state: bool = False,
        render_mode: str | None = None,
    ) -> None:
        """cameras: the observed cameras (() for state only); the rest as ``SimEnv``."""
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        self.render_mode = render_mode
        self.cameras = tuple(cameras)
        rendering = bool(self.cameras) or render_mode is not None
        self.sim = SimEnv(
            task, image_size=image_size, control_hz=control_hz, action_noise=action_noise,
            grip_state=grip_state, cameras=self.cameras or (RENDER_CAMERA,), render=rendering,
        )  # fmt: skip
        self.metadata = {**self.metadata, "render_fps": control_hz}
        features = self.sim.feature_spec()
        self._keys = [k for k in features if k != "action" and not k.startswith(IMAGES)]
        self._keys += [IMAGES + cam for cam in self.cameras]
        self.observation_space = spaces.Dict({key: _space(features[key]) for key in self._keys})
        self.action_space = spaces.Box(self.sim.action_low, self.sim.action_high, dtype=np.float32)
        self._max_episode_steps = self.sim.max_steps  # lerobot's evaluation reads it

    @property
    def task(self) -> str:
        """The task's name (lerobot's evaluation reads ``task`` and ``task_description``)."""
        return self.sim.task.name

    @property
    def task_description(self) -> str:
        """The current episode's instruction."""
        return self.sim.instruction

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        scene = seed if seed is not None else int(self.np_random.integers(2**31))
        obs = self.sim.reset(seed=scene)
        return self._observation(obs), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs = self.sim.step(np.asarray(action, dtype=np.float32))
        success = self.sim.success()
        truncated = not success and self.sim.tick >= self.sim.max_steps
        return self._observation(obs), float(success), success, truncated, self._info(success)

    def render(self) -> np.ndarray | None:
        """The front camera, uint8 (H, W, 3) (None without ``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            return None
        return self.sim.render_camera(RENDER_CAMERA)

    def close(self) -> None:
        self.sim.close()

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: obs[key] for key in self._keys}

    def _info(self, success: bool = False) -> dict[str, Any]:
        return {"is_success": success, "task": self.sim.instruction}


def _space(feature: dict) -> spaces.Box:
    if feature["dtype"] in ("image", "video"):
        return spaces.Box(0, 255, tuple(feature["shape"]), dtype=np.uint8)
    return spaces.Box(-np.inf, np.inf, tuple(feature["shape"]), dtype=np.float32)


def register_envs() -> None:
    """Register ``rtvla/<Task>-v0`` for every task (idempotent)."""
    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=SimGymEnv, kwargs={"task": task})


register_envs()
