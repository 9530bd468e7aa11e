"""The MuJoCo simulator as a driver: ``act`` advances the simulation by exactly one control tick.

Besides the ``Driver`` calls it exposes what an evaluation needs from a simulator and a real
robot cannot give: ``reset(seed)``, ``success()``, ``instruction``, ``max_steps`` and ``tick``.
"""

from __future__ import annotations

import numpy as np

from runtime.robot.drivers.base import ActionLimits, DriverContext, Observation
from runtime.wire.keys import IMAGES, STATE
from sim import SimEnv
from sim.units import FEATURE_NAMES, SCALE

# Rate limits, a little above the scripted demonstrators' fastest commands (joints capped at
# 3 rad/s, finger opening peaking near 0.15 m/s), so that clamping flags a policy moving faster
# than any demonstration and never a faithful one. An SO-100's STS3215 servos reach about
# 4.7 rad/s.
ARM_SPEED = 3.5  # rad/s (about 200 deg/s), fastest commanded arm joint motion
GRIPPER_STROKE_S = 0.15  # s, shortest time to command the gripper from closed to fully open


class MujocoDriver(DriverContext):
    """A simulated SO-100-class arm running ``task`` (see ``sim.SimEnv`` for the arguments).

    ``connect`` resets the scene with ``seed``; ``reset`` starts another episode; ``close``
    releases the renderer for good.
    """

    def __init__(
        self,
        task: str = "pick_place",
        image_size: int = 96,
        control_hz: float = 30.0,
        cameras: tuple[str, ...] = ("front", "wrist"),
        seed: int | None = None,
        render: bool = True,
        keep_frames: bool = False,
        action_noise: float = 0.0,
        grip_state: bool = False,
    ) -> None:
        self.seed = seed
        self.keep_frames = keep_frames  # keep this episode's camera frames, one per tick
        self.frames: list[np.ndarray] = []  # (h, n_cams * w, 3) uint8, cameras side by side
        self.states: list[np.ndarray] = []  # observation.state at the start of every tick
        self.env = SimEnv(
            task,
            image_size=image_size,
            control_hz=control_hz,
            cameras=tuple(cameras),
            render=render,
            action_noise=action_noise,
            grip_state=grip_state,
        )
        self._limits = _limits(self.env)
        self._obs: Observation | None = None  # observation after the last reset or step

    def connect(self) -> None:
        self.reset(self.seed)

    def observe(self) -> Observation:
        """The current observation; rendered once per tick however often it is asked for."""
        if self._obs is None:
            self._obs = self.env.observe()
        return self._obs

    def act(self, action: np.ndarray) -> None:
        """Step the simulation one control tick towards ``action`` (clipped to the ctrlrange)."""
        self.step_command(self._limits.check(action))

    def step_command(self, command: np.ndarray) -> None:
        """One control tick with a checked ``command`` (6,), keeping the frame if asked to."""
        self._obs = self.env.step(command)
        self.states.append(np.asarray(self._obs[STATE], np.float32))
        if self.keep_frames:
            cams = [self._obs[k] for k in sorted(self._obs) if k.startswith(IMAGES)]
            if cams:
                self.frames.append(np.concatenate(cams, axis=1))

    def close(self) -> None:
        self.env.close()
        self._obs = None

    def feature_spec(self) -> dict[str, dict]:
        return self.env.feature_spec()

    def limits(self) -> ActionLimits:
        return self._limits

    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode (a new scene and instruction drawn from ``seed``)."""
        self._obs = self.env.reset(seed=seed)
        self.frames = []
        self.states = [np.asarray(self._obs[STATE], np.float32)]
        return self._obs

    def success(self) -> bool:
        return self.env.success()

    def outcome(self) -> tuple[float, str | None]:
        """(distance to the goal in m, failure class or None), read from the scene."""
        return self.env.outcome()

    @property
    def instruction(self) -> str:
        return self.env.instruction

    @property
    def max_steps(self) -> int:
        return self.env.max_steps

    @property
    def tick(self) -> int:
        return self.env.tick


def _limits(env: SimEnv) -> ActionLimits:
    """The actuators' ctrlrange; ``max_delta`` from ``ARM_SPEED`` and ``GRIPPER_STROKE_S``."""
    low, high = env.action_low, env.action_high  # follower units (sim.units)
    speed = np.full(len(FEATURE_NAMES), ARM_SPEED) * SCALE  # (6,) follower units per second
    gripper = len(FEATURE_NAMES) - 1
    speed[gripper] = (high[gripper] - low[gripper]) / GRIPPER_STROKE_S
    return ActionLimits(low=low, high=high, max_delta=speed / env.control_hz, names=FEATURE_NAMES)
