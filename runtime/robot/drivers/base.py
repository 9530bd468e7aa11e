"""The robot boundary: a driver observes one robot and commands it one control tick at a time.

Observations and actions use lerobot's dataset keys, so a policy trained on a LeRobotDataset
reads a driver's observation as it is:

- ``observation.state``: float32 (S,), the robot's proprioception;
- ``observation.images.<cam>``: uint8 (H, W, 3), one per camera;
- actions: float32 (A,), absolute joint targets in the order of ``feature_spec()["action"]``.

This module imports numpy only, so a robot-side process stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import numpy as np

Observation = dict[str, np.ndarray]


@dataclass(frozen=True)
class ActionLimits:
    """Where a robot may be commanded: absolute bounds and the largest change per control tick."""

    low: np.ndarray  # (A,) float32, lowest joint target
    high: np.ndarray  # (A,) float32, highest joint target
    max_delta: np.ndarray  # (A,) float32, largest change between two consecutive ticks (> 0)
    names: tuple[str, ...]  # (A,) joint names, as in feature_spec()["action"]["names"]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        for field in ("low", "high", "max_delta"):
            value = np.array(getattr(self, field), dtype=np.float32)  # a read-only copy
            if value.shape != (len(names),):
                raise ValueError(
                    f"ActionLimits.{field} has shape {value.shape}, expected ({len(names)},) "
                    f"for the joints {names}"
                )
            value.flags.writeable = False
            object.__setattr__(self, field, value)
        if not (np.all(self.low <= self.high) and np.all(self.max_delta > 0)):
            raise ValueError(
                f"invalid ActionLimits for {names}: need low <= high and max_delta > 0, got "
                f"low={self.low.tolist()}, high={self.high.tolist()}, "
                f"max_delta={self.max_delta.tolist()}"
            )

    def check(self, action: np.ndarray) -> np.ndarray:
        """``action`` as float32 (A,); raises if its shape does not match the joints."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.low.shape:
            raise ValueError(
                f"action has shape {action.shape}, the robot expects {self.low.shape} "
                f"(joints {self.names})"
            )
        return action


@runtime_checkable
class Driver(Protocol):
    """One robot, real or simulated, behind the six calls a controller needs."""

    def connect(self) -> None:
        """Open the robot (hardware, simulator) so that ``observe`` and ``act`` work."""
        ...

    def observe(self) -> Observation:
        """The robot's current observation (see the module docstring for the keys)."""
        ...

    def act(self, action: np.ndarray) -> None:
        """Command absolute joint targets, float32 (A,), for this control tick."""
        ...

    def close(self) -> None:
        """Release the robot; safe to call twice."""
        ...

    def feature_spec(self) -> dict[str, dict]:
        """lerobot-style features (dtype, shape, names) of the observation keys and ``action``."""
        ...

    def limits(self) -> ActionLimits:
        """The robot's action limits, in the order of ``feature_spec()["action"]["names"]``."""
        ...


class DriverContext:
    """Mixin making a driver a context manager: ``connect`` on enter, ``close`` on exit."""

    def __enter__(self) -> Self:
        self.connect()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # type: ignore[attr-defined]


class RenamedDriver(DriverContext):
    """A driver whose observation keys are renamed to the policy's (lerobot's
    ``--rename_map``): ``{"observation.images.laptop": "observation.images.front"}`` makes a
    robot's ``laptop`` camera the ``front`` camera a policy was trained with. Everything else
    (a simulator's ``reset``, ``success``, ...) is the wrapped driver's."""

    def __init__(self, driver: Driver, rename_map: dict[str, str]) -> None:
        spec = driver.feature_spec()
        missing = sorted(set(rename_map) - set(spec))
        if missing:
            raise ValueError(
                f"rename_map renames {missing}, which the driver does not observe (it has "
                f"{sorted(spec)}): map the driver's own keys to the policy's"
            )
        self.driver, self.rename_map = driver, dict(rename_map)

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.driver, name)
        if name == "reset":  # a simulator's reset returns the first observation
            return lambda *args, **kwargs: self._rename(attribute(*args, **kwargs))
        return attribute

    def _rename(self, observation: dict) -> dict:
        return {self.rename_map.get(k, k): v for k, v in observation.items()}

    def connect(self) -> None:
        self.driver.connect()

    def observe(self) -> Observation:
        return self._rename(self.driver.observe())

    def act(self, action: np.ndarray) -> None:
        self.driver.act(action)

    def close(self) -> None:
        self.driver.close()

    def feature_spec(self) -> dict[str, dict]:
        return self._rename(self.driver.feature_spec())

    def limits(self) -> ActionLimits:
        return self.driver.limits()
