"""The sim speaks lerobot's SO-101 follower units (sim.units), converted in one place."""

import math

import numpy as np
import pytest

from sim import JOINT_NAMES, SimEnv
from sim.units import FEATURE_NAMES, ROBOT_TYPE, from_follower, gripper, to_follower


def test_conversion_both_ways() -> None:
    si = np.array([math.pi / 2, -math.pi / 4, 0.0, 1.0, -math.pi, 0.035])
    follower = to_follower(si)
    np.testing.assert_allclose(follower, [90, -45, 0, math.degrees(1.0), -180, 100], rtol=1e-6)
    np.testing.assert_allclose(from_follower(follower), si, rtol=1e-6)
    batch = np.random.default_rng(0).normal(size=(4, 7, 6))
    np.testing.assert_allclose(from_follower(to_follower(batch)), batch, rtol=1e-6, atol=1e-6)
    assert gripper(0.0) == 0 and gripper(0.0175) == pytest.approx(50)
    assert tuple(f"{n}.pos" for n in JOINT_NAMES) == FEATURE_NAMES
    assert ROBOT_TYPE == "so101_follower"


def test_env_observes_and_acts_in_follower_units() -> None:
    env = SimEnv("reach", render=False)
    obs = env.reset(seed=0)
    qpos = env.data.qpos[env.robot.qpos]  # rad and m
    np.testing.assert_allclose(obs["observation.state"], to_follower(qpos), rtol=1e-6)
    assert 0 <= obs["observation.state"][5] <= 100
    target = obs["observation.state"].copy()
    target[0] += 10.0  # ten degrees of pan
    env.step(target)
    np.testing.assert_allclose(
        env.data.ctrl[env.robot.actuators], from_follower(target), rtol=1e-5, atol=1e-6
    )
    for _ in range(30):
        obs = env.step(target)
    assert obs["observation.state"][0] == pytest.approx(target[0], abs=1.0)  # degrees
    env.close()


def test_sim_and_real_so101_datasets_merge(tmp_path) -> None:
    """A sim recording (extras=false) and a dataset with a real SO-101's features, built the way
    lerobot-record builds them (``hw_to_dataset_features`` of the follower's motors and
    cameras), merge with lerobot's ``aggregate_datasets``; the merged one reads back in
    follower units."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.datasets.aggregate import aggregate_datasets
    from lerobot.utils.feature_utils import hw_to_dataset_features

    from sim.record import record_dataset

    env = SimEnv("reach", image_size=32)
    record_dataset(env, tmp_path / "sim", 1, video=True, extras=False, repo_id="local/sim",
                   progress=False)  # fmt: skip
    env.close()

    motors = {f"{m}.pos": float for m in JOINT_NAMES}  # SOFollower._motors_ft
    cameras = {cam: (32, 32, 3) for cam in ("front", "wrist")}  # SOFollower._cameras_ft
    features = {
        **hw_to_dataset_features(motors, "action", use_video=True),
        **hw_to_dataset_features({**motors, **cameras}, "observation", use_video=True),
    }
    real = LeRobotDataset.create("local/real", fps=30, features=features, root=tmp_path / "real",
                                 robot_type="so101_follower", use_videos=True)  # fmt: skip
    for t in range(8):
        frame = {f"observation.images.{c}": np.full((32, 32, 3), 20 * t, np.uint8) for c in cameras}
        pose = np.array([10.0 * t, -20, 30, 40, 0, 55], np.float32)  # degrees, gripper 55 %
        real.add_frame({**frame, "observation.state": pose, "action": pose, "task": "real"})
    real.save_episode()
    real.finalize()

    roots = [tmp_path / "sim", tmp_path / "real"]
    aggregate_datasets(["local/sim", "local/real"], "local/merged", roots=roots,
                       aggr_root=tmp_path / "merged")  # fmt: skip
    merged = LeRobotDataset("local/merged", root=tmp_path / "merged", video_backend="pyav")
    assert merged.num_episodes == 2 and merged.meta.robot_type == ROBOT_TYPE
    assert merged.meta.features["action"]["names"] == list(FEATURE_NAMES)
    episodes = np.asarray(merged.hf_dataset["episode_index"])
    state = np.stack(merged.hf_dataset.with_format("numpy")["observation.state"])
    assert np.all((state[:, 5] >= 0) & (state[:, 5] <= 100))  # both grippers in 0-100
    np.testing.assert_allclose(state[episodes == 1][3], [30, -20, 30, 40, 0, 55])
    assert merged[len(merged) - 1]["observation.images.front"].shape == (3, 32, 32)
