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
