"""Serving a LeRobot policy (``checkpoint=lerobot:PATH``): a tiny randomly initialised ACT,
saved with its processors as lerobot-train saves it, behind rtvla's server and controller."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def act_folder(tmp_path_factory):
    """A tiny ACT (random weights, no pretrained backbone) reading the sim's front camera at
    32x32 and its state, predicting 20-step chunks, saved with ``save_pretrained``."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    inputs = {
        "observation.images.front": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32)),
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,)),
    }
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))}
    config = ACTConfig(
        input_features=inputs, output_features=outputs, chunk_size=20, n_action_steps=20,
        dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
        latent_dim=8, use_vae=False, pretrained_backbone_weights=None, device="cpu",
        push_to_hub=False,
    )  # fmt: skip
    stats = {
        "observation.state": {"mean": np.zeros(6), "std": np.ones(6)},
        "action": {"mean": np.zeros(6), "std": np.full(6, 0.1)},
        "observation.images.front": {"mean": np.full((3, 1, 1), 0.5),
                                     "std": np.full((3, 1, 1), 0.2)},
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("lerobot_act") / "pretrained_model"
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    for part in (ACTPolicy(config), preprocessor, postprocessor):
        part.save_pretrained(folder)
    return folder


def test_lerobot_policy_serves_plain_chunks_and_refuses_rtc(act_folder):
    from runtime.robot.client import ZmqPolicyClient
    from runtime.serving.loader import load_policy
    from runtime.serving.server import PolicyServer, warm_up
    from runtime.wire.protocol import ChunkReply, ErrorReply, ObservationRequest

    policy = load_policy(f"lerobot:{act_folder}")
    assert (policy.info.chunk_length, policy.info.action_dim) == (20, 6)
    assert policy.info.sampling == ("plain",)
    assert policy.info.features["observation.images.front"] == {"dtype": "uint8",
                                                                "shape": (32, 32, 3)}  # fmt: skip
    warm_up(policy)
    obs = {"observation.images.front": np.zeros((32, 32, 3), np.uint8),
           "observation.state": np.zeros(6, np.float32)}  # fmt: skip

    def request(i, sampling, prev=None):
        return ObservationRequest(
            request_id=i, robot_id="r", tick=0, observation=obs, instruction="reach",
            delay=1 if prev is not None else 0, execution_horizon=2, sampling=sampling,
            prev_actions=prev,
        )  # fmt: skip

    with PolicyServer(policy, "tcp://127.0.0.1:*", log_every_s=None) as server:
        server.start_in_thread()
        client = ZmqPolicyClient(server.address, timeout_s=30.0)
        try:
            assert client.metadata().sampling == ("plain",)
            client.submit(request(1, "plain"))
            chunk = client.poll(timeout_s=30.0)
            client.submit(request(2, "guided:exp", np.zeros((5, 6), np.float32)))
            refused = client.poll(timeout_s=30.0)
        finally:
            client.close()
    assert isinstance(chunk, ChunkReply) and chunk.actions.shape == (20, 6)
    assert isinstance(refused, ErrorReply) and refused.code == "unsupported"
    assert "needs a flow model" in refused.message and "executor=sync" in refused.message


def run_cfg(act_folder, tmp_path, executor):
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR

    overrides = [
        "task=reach", "task.image_size=32", f"server=local:lerobot:{act_folder}",
        f"executor={executor}", "episodes=1", "max_ticks=12", f"output_dir={tmp_path}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def test_lerobot_policy_drives_the_sim_with_naive_and_refuses_rtc(act_folder, tmp_path):
    from runtime.commands.run import main

    figures = main(run_cfg(act_folder, tmp_path / "naive", "naive"))
    assert figures["executor"] == "naive" and figures["ticks"] == 12
    assert figures["chunks_received"] >= 1 and figures["planned_ticks"] >= 8  # it drove the arm
    assert figures["request_errors"] == 0
    with pytest.raises(ValueError, match=r"executor=rtc asks for guided:exp.*not a flow model"):
        main(run_cfg(act_folder, tmp_path / "rtc", "rtc"))
