"""Training from a LeRobotDataset: data path, exact resume, checkpoints and their checks."""

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TINY = {
    "name": "vla", "chunk_length": 50, "width": 32, "depth": 2, "num_heads": 2,
    "expert_width": 32, "patch_size": 24, "mlp_ratio": 2.0, "max_lang_tokens": 48,
    "fast_vocab_size": 300, "max_fast_tokens": 48, "num_steps": 4, "time_alpha": 1.5,
    "time_beta": 1.0, "max_tau": 0.999, "insulation": True, "fast_loss": True, "alpha": 1.0,
    "rtc_training_max_delay": 0, "vision": "patch", "expert": "transformer",
}  # fmt: skip


def train_cfg(dataset, output, steps, resume=False, **policy):
    return {
        "dataset": str(dataset), "output": str(output), "steps": steps, "batch_size": 4,
        "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 1e-4, "warmup_steps": 2,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": resume,
        "data": "memory", "num_workers": 0, "log_every": 1, "save_every": 2,
        "instruction": "hierarchy", "fast_tokenizer": None, "fast_fit_chunks": 64,
        "device": "cpu", "policy": {**TINY, **policy},
    }  # fmt: skip


def test_in_memory_items_match_lerobot_delta_timestamps(reach_dataset):
    from policies.data import InMemoryChunks, open_dataset

    root, _ = reach_dataset
    ds = open_dataset(root, chunk_length=50)
    mem = InMemoryChunks(ds, 50)
    assert len(mem) == len(ds)
    for i in (0, 30, len(ds) - 5):
        a, b = ds[i], mem[i]
        for key in ("observation.state", "action", "action_is_pad",
                    "observation.images.front", "observation.images.wrist"):  # fmt: skip
            torch.testing.assert_close(b[key], a[key], msg=key)
        for key in ("task", "step_instruction", "corrective_instruction"):
            assert b[key] == a[key]
        assert b["correction"] == bool(a["correction"])


def test_label_shift_reads_the_labels_of_a_later_frame_of_the_same_episode(reach_dataset):
    from policies.data import InMemoryChunks, open_dataset

    root, _ = reach_dataset
    ds = open_dataset(root, chunk_length=8)
    plain, shifted = InMemoryChunks(ds, 8), InMemoryChunks(ds, 8, label_shift=15)
    keys = ("step_instruction", "corrective_instruction", "correction")
    assert len({plain[i]["step_instruction"] for i in range(len(ds))}) > 1  # labels change
    for i in range(len(ds)):
        later = min(i + 15, int(plain.ep_end[i]) - 1)
        assert [shifted[i][k] for k in keys] == [plain[later][k] for k in keys], i
        assert shifted[i]["task"] == plain[i]["task"]
        torch.testing.assert_close(shifted[i]["action"], plain[i]["action"])
    with pytest.raises(ValueError, match="label_shift"):
        InMemoryChunks(ds, 8, label_shift=-1)


def test_correction_weight_draws_the_labelled_corrections_that_many_times_as_often():
    from policies.trainer import sampling_weights

    class Items:
        correction = np.array([False, True, False, True, False])

        def __len__(self):
            return 5

        def frame_in_episode(self):
            return np.array([0, 1, 2, 0, 1])

    assert sampling_weights(Items(), 0, 1.0, 1.0) is None
    w = sampling_weights(Items(), 0, 1.0, 4.0)
    assert np.allclose(w, np.array([1, 4, 1, 4, 1]) / 11)
    w = sampling_weights(Items(), 1, 2.0, 4.0)  # the two weights multiply
    assert np.allclose(w, np.array([2, 4, 1, 8, 1]) / 16)
    with pytest.raises(ValueError, match="correction_weight=0"):
        sampling_weights(Items(), 0, 1.0, 0.0)
    Items.correction = None
    with pytest.raises(ValueError, match="`correction` label"):
        sampling_weights(Items(), 0, 1.0, 2.0)


def test_failure_segments_are_the_frames_before_each_episodes_first_correction():
    from policies.data import failure_segments

    episode = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    correction = np.array([0, 0, 1, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    expected = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    np.testing.assert_array_equal(failure_segments(episode, correction), expected)


def test_failure_actions_drop_pads_the_injected_failures_actions_only(reach_corrections_dataset):
    from policies.data import InMemoryChunks, failure_segments, open_dataset

    ds = open_dataset(reach_corrections_dataset, chunk_length=8)
    kept, dropped = InMemoryChunks(ds, 8, ()), InMemoryChunks(ds, 8, (), drop_failure_actions=True)
    failing = failure_segments(kept.episode, kept.correction)
    assert 0 < failing.sum() < len(ds)  # both episodes fail first, then recover
    for i in range(len(ds)):
        if failing[i]:
            assert bool(dropped[i]["action_is_pad"].all()), i
        else:
            assert torch.equal(dropped[i]["action_is_pad"], kept[i]["action_is_pad"]), i
        torch.testing.assert_close(dropped[i]["observation.state"], kept[i]["observation.state"])


def test_the_default_vla_recipe_trains_on_a_dataset_with_corrections(
    reach_corrections_dataset, tmp_path
):
    """The defaults (policy/vla from the dataclass, recipe/vla.yaml's failure_actions=auto):
    the scene-reading expert, and the injected failures' actions dropped where labelled."""
    from policies.checkpoint import load_checkpoint
    from policies.kinds import policy_defaults
    from policies.train import _failure_actions, train

    root = reach_corrections_dataset
    small = {"width": 32, "depth": 1, "num_heads": 2, "expert_width": 32, "chunk_length": 8}
    cfg = {**train_cfg(root, tmp_path / "run", 2), "instruction": "task",
           "failure_actions": "auto", "policy": {**policy_defaults()["vla"], **small}}  # fmt: skip
    assert _failure_actions(cfg) and not _failure_actions({**cfg, "data": "lerobot"})
    figures = train(cfg)
    assert figures["steps"] == 2 and np.isfinite(figures["loss"])
    config = load_checkpoint(tmp_path / "run").model.config
    assert (config.expert, config.vision, config.fast_loss) == ("scene_mixer", "keypoints", False)


def test_an_instruction_lookahead_needs_an_instruction_that_changes(reach_dataset, tmp_path):
    from policies.train import train

    root, _ = reach_dataset
    cfg = {**train_cfg(root, tmp_path / "a", 2), "instruction": "task",
           "instruction_lookahead_s": 0.5}  # fmt: skip
    with pytest.raises(ValueError, match="instruction=step, hierarchy"):
        train(cfg)
    assert not (tmp_path / "a").exists()


def test_failure_actions_is_checked_before_any_work(reach_dataset, tmp_path):
    from policies.train import train

    root, _ = reach_dataset
    with pytest.raises(ValueError, match="use keep, drop or auto"):
        train({**train_cfg(root, tmp_path / "a", 2), "failure_actions": "skip"})
    with pytest.raises(ValueError, match="needs data=memory"):
        train({**train_cfg(root, tmp_path / "b", 2), "failure_actions": "drop", "data": "lerobot"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_two_steps_then_resume_equals_four_steps(reach_dataset, tmp_path):
    from policies.train import train

    root, _ = reach_dataset
    straight = train(train_cfg(root, tmp_path / "a", 4))
    train(train_cfg(root, tmp_path / "b", 2))
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:  # a row logged after the last save
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    resumed = train(train_cfg(root, tmp_path / "b", 4, resume=True))
    assert straight["steps"] == resumed["steps"] == 4 and resumed["trained_steps"] == 2
    for name in ("model.safetensors", "train_state.safetensors"):
        a = load_file(tmp_path / "a" / "checkpoints" / "step_0000004" / name)
        b = load_file(tmp_path / "b" / "checkpoints" / "step_0000004" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # Without resume=true an existing run is refused.
    with pytest.raises(FileExistsError, match="resume=true"):
        train(train_cfg(root, tmp_path / "a", 4))


def test_checkpoint_serves_chunks_and_refuses_other_features(reach_dataset, tmp_path):
    from policies.checkpoint import check_features, load_checkpoint
    from policies.flow import euler_sample
    from policies.inference import load_flow_policy
    from policies.train import train
    from runtime.serving.loader import load_policy

    root, _ = reach_dataset
    train(train_cfg(root, tmp_path / "run", 2, fast_loss=False, insulation=False))
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == 2 and ckpt.fast_tokenizer is None
    policy = load_flow_policy(tmp_path / "run")

    class Request:
        observation: ClassVar[dict] = {
            "observation.state": np.zeros(6, np.float32),
            "observation.images.front": np.zeros((96, 96, 3), np.uint8),
            "observation.images.wrist": np.zeros((96, 96, 3), np.uint8),
        }
        instruction = "reach the red target"

    v = policy.velocity_fn([Request(), Request()])
    chunk = policy.unnormalize_actions(euler_sample(v, torch.zeros(2, 50, 6), 2))
    assert chunk.shape == (2, 50, 6) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    # What a policy server tells its clients about this checkpoint encodes on the wire.
    from runtime.wire.info import LatencyHistogram, metadata_reply
    from runtime.wire.protocol import decode, encode

    served = load_policy(tmp_path / "run")
    assert served.info.model_id == "run/step_0000002" and served.num_steps == TINY["num_steps"]
    from policies.checkpoint import export_checkpoint

    exported = export_checkpoint(tmp_path / "run", tmp_path / "shipped")
    assert not list(exported.glob("train_state*"))
    assert load_policy(exported).info.model_id == "shipped"
    meta = decode(encode(metadata_reply(1, served.info, LatencyHistogram(), 0.0, 0)))
    assert meta.features["observation.images.front"] == {"dtype": "uint8", "shape": (96, 96, 3)}
    assert meta.chunk_length == 50 and meta.action_dim == 6
    small = {k: dict(v) for k, v in ckpt.features.items()}
    small["observation.images.front"]["shape"] = (64, 64, 3)
    with pytest.raises(ValueError, match=r"observation.images.front has shape \(64, 64, 3\), the "
                       r"policy expects \(96, 96, 3\)"):  # fmt: skip
        check_features(ckpt.features, small, "set task.image_size=96 or retrain")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        load_checkpoint(tmp_path)


def test_camera_spec_needs_cameras_of_one_size():
    from policies.data import camera_spec

    cam = {"dtype": "image", "shape": (96, 96, 3)}
    assert camera_spec({"observation.images.wrist": cam, "observation.images.front": cam}) == (
        ("observation.images.front", "observation.images.wrist"),
        (96, 96),
    )
    with pytest.raises(ValueError, match="no camera features"):
        camera_spec({"observation.state": {"dtype": "float32", "shape": (6,)}})
    small = {"dtype": "image", "shape": (64, 64, 3)}
    with pytest.raises(ValueError, match="different sizes"):
        camera_spec({"observation.images.front": cam, "observation.images.wrist": small})


def test_the_shipped_checkpoint_loads_and_serves_a_chunk():
    """checkpoints/demo loads (every weight where the current code expects it) and samples a
    finite chunk."""
    from pathlib import Path

    from runtime.serving.loader import load_policy
    from runtime.wire.protocol import ObservationRequest

    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
    policy = load_policy(folder)
    info = policy.info
    observation = {
        key: np.zeros(spec["shape"], dtype=spec["dtype"]) for key, spec in info.features.items()
    }
    request = ObservationRequest(
        request_id=0, robot_id="test", tick=0, observation=observation,
        instruction="move the gripper to the red target", delay=0, execution_horizon=25,
        sampling="plain", seed=0,
    )  # fmt: skip
    (chunk,) = policy.infer([request])
    assert chunk.shape == (info.chunk_length, info.action_dim) and np.isfinite(chunk).all()


def test_a_checkpoint_from_before_the_newer_fields_loads_with_their_old_values(tmp_path):
    """A config.json written before vision, augment_shift, language, film, expert_instruction
    and word_buckets existed loads as the model that wrote it (patch tokens, byte tokens, no
    FiLM), with every weight in place."""
    import json

    import torch

    from policies.checkpoint import load_checkpoint, save_checkpoint
    from policies.normalize import Normalizer
    from policies.vla import VLA, VLAConfig

    old = {"vision": "patch", "augment_shift": 0, "language": "bytes", "film": False,
           "expert_instruction": False, "word_buckets": 4096, "aux_env_state": 0.0}  # fmt: skip
    config = VLAConfig(width=32, depth=1, num_heads=2, expert_width=32, patch_size=24,
                       chunk_length=8, fast_loss=False, **old)  # fmt: skip
    torch.manual_seed(0)
    model = VLA(config)
    norm = Normalizer({k: np.zeros(6) for k in ("observation.state", "action")},
                      {k: np.ones(6) for k in ("observation.state", "action")})  # fmt: skip
    folder = save_checkpoint(
        tmp_path, 1, model=model, ema=model.state_dict(), optimizer=torch.optim.AdamW(
            model.parameters()), normalizer=norm, fast_tokenizer=None, features={},
        train_config={}, fps=30,
    )  # fmt: skip
    meta = json.loads((folder / "config.json").read_text())
    meta["vla_config"] = {k: v for k, v in meta["vla_config"].items() if k not in old}
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(folder)
    assert {k: getattr(loaded.model.config, k) for k in old} == old
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, msg=key)


def test_the_scene_mixer_vla_trains_serves_and_runs_an_rtc_episode(reach_dataset, tmp_path):
    """expert=scene_mixer with teacher forcing and two flow samples per backbone pass: trains
    on a dataset with a scene state, loads, and runs one episode from pixels with the rtc
    executor (its guidance differentiates through the mixer)."""
    from hydra import compose, initialize_config_dir

    from policies.checkpoint import load_checkpoint
    from policies.train import train
    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    root, _ = reach_dataset
    policy = dict(
        fast_loss=False, insulation=False, chunk_length=8, expert="scene_mixer",
        expert_scene_teacher=1.0, flow_samples=2,
    )  # fmt: skip
    figures = train(train_cfg(root, tmp_path / "run", 2, **policy))
    assert np.isfinite(figures["fm"]) and np.isfinite(figures["aux_env"])
    config = load_checkpoint(tmp_path / "run").model.config
    assert config.expert == "scene_mixer" and config.flow_samples == 2
    overrides = [
        "task=reach", "executor=rtc", "executor.execution_horizon=4", "episodes=1",
        "max_ticks=12", "inference_delay_ticks=2", f"server=local:{tmp_path / 'run'}",
        f"output_dir={tmp_path / 'eval'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        result = main(compose(config_name="run", overrides=overrides))
    assert result["episodes"] == 1 and result["ticks"] == 12 and result["request_errors"] == 0
