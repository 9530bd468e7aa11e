"""Shared pytest fixtures.

The tests folder is not a package (a dependency ships a top-level ``tests`` package), so
shared helpers live here as fixtures, and the fake policies and drivers that tests and benches
share in ``runtime/robot/testing.py``.
"""

import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Remove the root-logger handlers a test added (a command run in-process configures
    logging through hydra, bound to that test's captured stdout): a thread that logs after the
    test would otherwise write to a closed stream."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in before]:
        if type(handler).__module__ != "_pytest.logging":  # pytest removes its own
            root.removeHandler(handler)
    root.setLevel(level)


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
    """A two-joint robot (joints "a", "b") whose joints jump to each command; ``commands``
    records them."""
    from runtime.robot.testing import JumpDriver

    return JumpDriver(("a", "b"))
