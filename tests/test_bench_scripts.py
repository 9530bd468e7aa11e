"""The bench scripts' own helpers still match the code they measure (they import from it by
path and module name, so a move elsewhere breaks them only when they run)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))  # as when run as a script: bench/ modules import each other
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_pickle_audit_reads_our_transport_and_finds_no_unpickling():
    pytest.importorskip("lerobot")
    audit = load("incumbents").pickle_audit()
    assert audit["rtvla_unpickles_network_bytes"] is False


def test_the_throughput_bench_builds_its_policies():
    throughput = load("throughput")
    policy = throughput.make_policy("synthetic", None, 3)
    assert policy.num_steps == 3 and policy.info.chunk_length > 0


def test_the_track_oracle_plans_from_the_chunk_it_would_run_and_tracks_without_delay():
    oracle = load("track_oracle")
    from sim.env import SimEnv

    env = SimEnv("track", render=False)
    try:
        env.reset(seed=1000)
        rng = __import__("numpy").random.default_rng(0)
        demonstrator = oracle.DelayedTrackDemonstrator(env, rng, "linear", delay=4, s=5)
        # naive switching: chunk observed at 0 runs ticks 4-8, at 5 runs 9-13, ...
        assert [demonstrator.observed_tick(t) for t in (0, 3, 4, 8, 9, 13, 14)] == [
            0, 0, 0, 0, 5, 5, 10,
        ]  # fmt: skip
    finally:
        env.close()
    with pytest.raises(ValueError, match="view='psychic'"):
        oracle.DelayedTrackDemonstrator(None, None, "psychic", 0, 5)
    result = oracle.success_rate("exact", 0, range(1000, 1002), s_min=5)
    assert result["episodes"] == 2 and result["successes"] == 2  # the demonstrator tracks


def test_track_precision_rebuilds_the_distance_the_task_measures_from_the_joint_states():
    import numpy as np

    from sim import SimEnv, make_demonstrator
    from sim.env import STATE

    precision = load("track_precision")
    env = SimEnv("track", render=False)
    try:
        obs, states, measured = env.reset(seed=1000), [], []
        demonstrator = make_demonstrator(env, np.random.default_rng(0))
        for _ in range(90):  # past the 2.5 s grace period (75 ticks)
            states.append(obs[STATE])
            obs = env.step(demonstrator.act()[0])
            measured.append(env.task.distance())  # after tick t's physics: observation t + 1
        states.append(obs[STATE])
        rebuilt = precision.distances(env, np.stack(states), seed=1000)
    finally:
        env.close()
    scored = [d for t, d in enumerate(measured, start=1) if t / 30 > 2.5 + 1e-9]
    assert len(scored) == 15
    # The task reads site_xpos as mj_step leaves it: computed before the last substep's
    # integration (2 ms earlier), which the joint states are after; a fraction of a mm apart.
    np.testing.assert_allclose(rebuilt, scored, atol=5e-4)
    assert np.abs(rebuilt - scored).max() > 0  # not the task's own number read back


def test_a_missed_grasp_is_a_close_on_nothing_after_an_opening():
    np = __import__("numpy")
    misses = load("grasp_misses").misses
    # open, close on nothing, still closed, open, close on a cube (30), open, close on nothing
    gripper = np.array([86, 40, 1, 0.5, 2, 60, 86, 30, 31, 86, 10, 0])
    assert misses(gripper, closed=3.0, opened=20.0) == 2
    assert misses(np.array([0.0, 0.0, 1.0]), closed=3.0, opened=20.0) == 0  # never opened


def test_scene_readout_finds_the_named_target_slot():
    readout = load("scene_readout")
    from sim.tasks.base import COLORS

    assert readout.named_slot("move the gripper to the green target") == list(COLORS).index("green")
    with pytest.raises(ValueError, match="names 2 of the colours"):
        readout.named_slot("the red or the blue target")


def train_scene_mixer(root: Path, run: Path) -> None:
    """A 2-step tiny VLA whose action expert reads the scene state (``expert=scene_mixer``)."""
    from runtime.commands.cli import main

    main(["train", f"dataset={root}", f"output={run}", "steps=2", "batch_size=4",
          "save_every=2", "fast_fit_chunks=64", "device=cpu", "policy.fast_loss=false",
          "policy.insulation=false", "policy.chunk_length=8", "policy.expert=scene_mixer",
          "policy.expert_scene_teacher=1.0", "policy.width=32", "policy.depth=1",
          "policy.expert_width=32"])  # fmt: skip


def test_scene_readout_along_matches_each_request_to_its_episodes_true_scene(
    reach_dataset, tmp_path
):
    """``along`` evaluates a (2-step) scene-mixer VLA and scores the scene it predicted at
    each request against the scene its episode's seed resets to."""
    readout = load("scene_readout")
    root, _ = reach_dataset
    run = tmp_path / "run"
    train_scene_mixer(root, run)
    result = readout.along(str(run), ["task=reach", "episodes=2", "seed=5000",
                                                   f"output_dir={tmp_path / 'eval'}"])  # fmt: skip
    assert result["episodes"] == 2
    rows = result["named_target_error_by_outcome"]
    assert sum(r["episodes"] for r in rows.values()) == 2
    for r in rows.values():  # an untrained head: centimetres off, finite
        assert 0 < r["first_request_cm_median"] < 100 and 0 < r["last_request_cm_median"] < 100
    by_target = result["outcome_by_named_target"]
    assert set(by_target) == {"target_red", "target_green", "target_blue"}
    assert sum(t["episodes"] for t in by_target.values()) == 2
    assert sum(t["successes"] for t in by_target.values()) == round(2 * result["success_rate"])
    frames = readout.readout(str(run), str(root), every=1)
    errors = frames["target_error_cm_median_by_target_all_and_named"]
    assert set(errors) == {"target_red", "target_green", "target_blue"}
    assert all(0 < all_frames < 100 for all_frames, _ in errors.values())
    assert any(named is not None for _, named in errors.values())


def test_scene_readout_true_scene_makes_the_vla_act_on_the_simulators_scene(
    reach_dataset, tmp_path
):
    """``true-scene``: the (2-step) scene-mixer VLA's actions follow the scene state the
    controller sends, which the VLA itself never reads, and ``rtvla eval`` runs with it."""
    import torch

    from policies.features import ENV_STATE
    from policies.inference import load_flow_policy
    from sim.env import make_env

    readout = load("scene_readout")
    root, _ = reach_dataset
    run = tmp_path / "run"
    train_scene_mixer(root, run)
    env = make_env("reach", render=True)
    obs = env.reset(seed=0)
    instruction = env.instruction
    env.close()
    moved = {**obs, ENV_STATE: obs[ENV_STATE] + 0.2}

    def scene_read(policy, observation):
        torch.manual_seed(0)
        with torch.no_grad():
            batch = policy.preprocess([observation], [instruction])
            cache = policy.model.encode_prefix(batch)
        return cache.scene.clone()

    plain = load_flow_policy(str(run))
    assert ENV_STATE not in plain.features
    assert torch.equal(scene_read(plain, obs), scene_read(plain, moved))  # the VLA ignores it
    policy = readout.true_scene_policy(str(run))
    assert ENV_STATE in policy.features  # the controller is asked to send it
    E = policy.model.config.env_state_dim
    read = scene_read(policy, obs)[0, :E]
    expected = policy.normalizer.normalize(ENV_STATE, torch.as_tensor(obs[ENV_STATE]))
    assert torch.allclose(read, expected.float())
    assert not torch.allclose(scene_read(policy, moved)[0, :E], read)
    readout.true_scene(str(run), ["task=reach", "episodes=1", "seed=5000",
                                  f"output_dir={tmp_path / 'eval'}"])  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["requests"] > 0  # a chunk for every request:
    assert summary["request_errors"] == 0 and summary["chunks_received"] == summary["requests"]
    assert load_flow_policy is __import__("policies.inference").inference.load_flow_policy
