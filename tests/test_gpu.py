"""On a CUDA device: three bf16-autocast training steps of the VLA and of the state flow policy
through ``rtvla train`` (``policies/train.py`` autocasts whenever the device is CUDA), and one
chunk from the shipped checkpoint loaded on the GPU (timed and logged, not checked against any
speed). Deselected by default; run them with ``uv run pytest -m gpu``. Without a GPU torch can
see they skip."""

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]
TINY_VLA = ("policy.width=32", "policy.depth=2", "policy.num_heads=2", "policy.expert_width=32",
            "policy.patch_size=24", "policy.mlp_ratio=2.0", "policy.fast_vocab_size=300",
            "policy.max_fast_tokens=48", "policy.num_steps=4")  # fmt: skip
TINY_STATE_FLOW = ("policy=state_flow", "policy.chunk_length=8", "policy.width=32",
                   "policy.depth=2", "policy.num_steps=3")  # fmt: skip

log = logging.getLogger(__name__)


def train_on_cuda(dataset: Path, output: Path, *overrides: str) -> dict:
    """Three steps of ``rtvla train`` on ``cuda``; checks the metrics it wrote, returns its
    figures."""
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR, register_policy_configs
    from runtime.commands.train import main

    register_policy_configs()
    overrides = (
        f"dataset={dataset}", f"output={output}", "steps=3", "batch_size=4", "save_every=3",
        "log_every=1", "warmup_steps=1", "fast_fit_chunks=64", "device=cuda", *overrides,
    )  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        figures = main(compose(config_name="train", overrides=list(overrides)))
    assert figures["steps"] == 3
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows), rows
    return figures


def test_three_bf16_training_steps_of_the_vla(reach_dataset, tmp_path):
    root, _ = reach_dataset
    train_on_cuda(root, tmp_path / "vla", *TINY_VLA)


def test_three_bf16_training_steps_of_the_state_flow_policy(reach_dataset, tmp_path):
    root, _ = reach_dataset
    train_on_cuda(root, tmp_path / "state_flow", *TINY_STATE_FLOW)


def test_one_chunk_of_the_shipped_policy_on_cuda(record_property):
    from runtime.serving.loader import load_policy
    from runtime.wire.protocol import ObservationRequest

    policy = load_policy(REPO / "checkpoints" / "demo", device="cuda")
    info = policy.info
    observation = {
        key: np.zeros(spec["shape"], spec["dtype"]) for key, spec in info.features.items()
    }
    request = ObservationRequest(
        request_id=1, robot_id="arm", tick=0, observation=observation,
        instruction="move the gripper to the red target", delay=0, execution_horizon=0,
        sampling="plain",
    )  # fmt: skip
    policy.infer([request])  # the first call pays for CUDA's lazy initialisation
    start = time.perf_counter()
    (chunk,) = policy.infer([request])  # a numpy array: the GPU has finished
    seconds = time.perf_counter() - start
    record_property("chunk_ms", round(seconds * 1000, 2))
    log.info("one chunk on %s: %.1f ms", torch.cuda.get_device_name(), 1000 * seconds)
    assert chunk.shape == (info.chunk_length, info.action_dim)
    assert np.all(np.isfinite(chunk))
