"""Any LeRobotDataset trains with the defaults: a dataset made with lerobot's own API (video
cameras of other names and sizes, SO-101 joint names) trains, and its checkpoint serves."""

import numpy as np
import pytest
import torch

JOINTS = [f"{j}.pos" for j in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex",
                               "wrist_roll", "gripper")]  # fmt: skip
CAMERAS = {"laptop": (48, 64), "phone": (40, 40)}  # lerobot's example names, two sizes


def make_lerobot_dataset(root, episodes=2, frames=12, video=True):
    """A small SO-101-like dataset written with ``LeRobotDataset.create`` (as lerobot-record
    does); frame t of camera c is filled with a value from t, so decoding can be checked."""
    from lerobot.datasets import LeRobotDataset

    kind = "video" if video else "image"
    features = {f"observation.images.{cam}": {"dtype": kind, "shape": (h, w, 3),
                                               "names": ["height", "width", "channels"]}
                for cam, (h, w) in CAMERAS.items()}  # fmt: skip
    for key in ("observation.state", "action"):
        features[key] = {"dtype": "float32", "shape": (6,), "names": JOINTS}
    ds = LeRobotDataset.create("local/so101_test", fps=30, features=features, root=root,
                               robot_type="so101_follower", use_videos=video)  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for t in range(frames):
            frame = {f"observation.images.{cam}": np.full((h, w, 3), 10 * t, np.uint8)
                     for cam, (h, w) in CAMERAS.items()}  # fmt: skip
            frame["observation.state"] = rng.normal(size=6).astype(np.float32)
            frame["action"] = rng.normal(size=6).astype(np.float32)
            ds.add_frame({**frame, "task": "pick up the cube"})
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    return make_lerobot_dataset(tmp_path_factory.mktemp("lerobot") / "so101")


def test_resize_with_pad_keeps_aspect_and_identity():
    from policies.vision import resize_with_pad

    x = torch.ones(2, 3, 48, 64)
    y = resize_with_pad(x, (96, 96))  # scaled to 72 x 96, 12 black rows above and below
    assert y.shape == (2, 3, 96, 96)
    assert y[:, :, :12].abs().max() == 0 and y[:, :, -12:].abs().max() == 0
    torch.testing.assert_close(y[:, :, 12:-12], torch.ones(2, 3, 72, 96))
    assert resize_with_pad(x, (48, 64)) is x  # a policy at the cameras' size: untouched


def test_video_cameras_decode_in_memory_as_lerobot_queries(video_dataset):
    from policies.data import InMemoryChunks, open_dataset

    ds = open_dataset(video_dataset, chunk_length=4)
    rename = {"observation.images.laptop": "observation.images.front"}
    mem = InMemoryChunks(ds, 4, rename_map=rename)
    assert mem.image_keys == ("observation.images.front", "observation.images.phone")
    for i in (0, 7, len(ds) - 1):
        a, b = ds[i], mem[i]
        # The same frames as lerobot's own query (lossy codec: close, not equal).
        torch.testing.assert_close(b["observation.images.front"], a["observation.images.laptop"],
                                   atol=0.05, rtol=0)  # fmt: skip
        assert b["observation.images.phone"].shape == (3, 40, 40)
        for key in ("action", "action_is_pad", "observation.state"):
            torch.testing.assert_close(b[key], a[key], msg=key)


def compose_train(overrides):
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR, register_policy_configs

    register_policy_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_lerobot_video_dataset_trains_with_defaults_and_serves(video_dataset, tmp_path):
    from policies.checkpoint import load_checkpoint
    from policies.train import train
    from runtime.robot.client import ZmqPolicyClient
    from runtime.serving.loader import load_policy
    from runtime.serving.server import PolicyServer
    from runtime.wire.protocol import ChunkReply, ObservationRequest

    cfg = compose_train([f"dataset={video_dataset}", f"output={tmp_path / 'run'}",
                            "steps=3", "batch_size=4", "device=cpu", "fast_fit_chunks=32",
                            "rename_map={observation.images.laptop: observation.images.front}",
                            "policy.chunk_length=8"])  # fmt: skip
    figures = train(cfg)
    assert figures["steps"] == 3
    ckpt = load_checkpoint(tmp_path / "run")
    config = ckpt.model.config
    assert config.image_keys == ("observation.images.front", "observation.images.phone")
    assert config.image_size == (96, 96)  # the policy's size, not the cameras'
    assert ckpt.features["observation.images.front"]["shape"] == (48, 64, 3)

    policy = load_policy(tmp_path / "run")
    obs = {"observation.images.front": np.zeros((48, 64, 3), np.uint8),
           "observation.images.phone": np.zeros((40, 40, 3), np.uint8),
           "observation.state": np.zeros(6, np.float32)}  # fmt: skip
    request = ObservationRequest(request_id=1, robot_id="r", tick=0, observation=obs,
                                 instruction="pick up the cube", delay=0, execution_horizon=0,
                                 sampling="plain", seed=0)  # fmt: skip
    with PolicyServer(policy, "tcp://127.0.0.1:*", log_every_s=None) as server:
        server.start_in_thread()
        client = ZmqPolicyClient(server.address, timeout_s=30.0)
        try:
            client.submit(request)
            reply = client.poll(timeout_s=30.0)
        finally:
            client.close()
    assert isinstance(reply, ChunkReply), reply
    assert reply.actions.shape == (8, 6) and np.isfinite(reply.actions).all()


def test_renamed_driver_gives_the_policy_its_camera_names():
    from runtime.robot.drivers.base import RenamedDriver
    from runtime.robot.testing import JumpDriver

    class CameraDriver(JumpDriver):
        def observe(self):
            return {**super().observe(), "observation.images.laptop": np.zeros((4, 4, 3))}

        def feature_spec(self):
            cam = {"dtype": "video", "shape": (4, 4, 3)}
            return {**super().feature_spec(), "observation.images.laptop": cam}

    rename = {"observation.images.laptop": "observation.images.front"}
    driver = RenamedDriver(CameraDriver(), rename)
    assert "observation.images.front" in driver.observe()
    assert "observation.images.front" in driver.feature_spec()
    assert not hasattr(driver, "reset")  # a real robot stays one (no simulator reset)
    with pytest.raises(ValueError, match="does not observe"):
        RenamedDriver(JumpDriver(), rename)
