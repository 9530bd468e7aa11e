"""Shared pytest fixtures.

The tests folder is not a package (a dependency ships a top-level ``tests`` package), so
shared helpers live here as fixtures rather than in an importable module.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def reach_dataset(tmp_path_factory):
    """Two short scripted ``reach`` episodes recorded as a LeRobotDataset v3 (with cameras)."""
    from sim import SimEnv
    from sim.record import record_dataset

    root = tmp_path_factory.mktemp("datasets") / "reach"
    env = SimEnv("reach")
    summary = record_dataset(env, root, episodes=2, seed=0, progress=False)
    env.close()
    return root, summary


@pytest.fixture(scope="session")
def reach_corrections_dataset(tmp_path_factory):
    """Two scripted ``reach`` episodes, each with an injected failure and its labelled
    correction (step, corrective instruction, flag), as a LeRobotDataset v3."""
    from sim import SimEnv
    from sim.record import record_dataset

    root = tmp_path_factory.mktemp("datasets") / "reach_corrections"
    env = SimEnv("reach")
    record_dataset(env, root, episodes=2, seed=0, failure_prob=1.0, progress=False)
    env.close()
    return root


@pytest.fixture
def jump_driver():
    """A two-joint robot whose joints jump to each command; ``commands`` records them."""
    import numpy as np

    from runtime.robot.drivers.base import ActionLimits, DriverContext
    from runtime.wire.keys import STATE

    class JumpDriver(DriverContext):
        names = ("a", "b")

        def __init__(self) -> None:
            self.position = np.zeros(2, np.float32)
            self.commands: list[np.ndarray] = []

        def connect(self) -> None:
            pass

        def close(self) -> None:
            pass

        def observe(self) -> dict[str, np.ndarray]:
            return {STATE: self.position.copy()}

        def act(self, action: np.ndarray) -> None:
            self.commands.append(np.array(action))
            self.position = np.array(action, np.float32)

        def feature_spec(self) -> dict[str, dict]:
            spec = {"dtype": "float32", "shape": (2,), "names": list(self.names)}
            return {STATE: spec, "action": spec}

        def limits(self) -> ActionLimits:
            return ActionLimits(low=[-1e6] * 2, high=[1e6] * 2, max_delta=[1e6] * 2,
                                names=self.names)  # fmt: skip

    return JumpDriver()
