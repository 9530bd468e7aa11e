"""Recording scripted demonstrations as LeRobotDataset v3, and loading them back with lerobot."""

import subprocess
import sys

import numpy as np
import pytest

H = 50


def test_dataset_round_trip_with_action_chunks(reach_dataset):
    from lerobot.datasets import LeRobotDataset

    root, summary = reach_dataset
    ds = LeRobotDataset(
        "reach", root=root, video_backend="pyav",
        delta_timestamps={"action": [i / 30 for i in range(H)]},
    )  # fmt: skip
    assert ds.num_episodes == 2 == summary.episodes
    assert len(ds) == summary.frames
    ep_len = int((np.asarray(ds.hf_dataset["episode_index"]) == 0).sum())
    item = ds[0]
    assert item["observation.images.front"].shape == (3, 96, 96)
    assert item["observation.images.wrist"].shape == (3, 96, 96)
    assert item["observation.state"].shape == (6,)
    assert item["action"].shape == (H, 6)
    assert not item["action_is_pad"].any()
    assert item["task"].startswith("move the gripper to the ")
    assert isinstance(item["step_instruction"], str) and item["step_instruction"]
    assert item["corrective_instruction"] == ""
    assert not bool(item["correction"])
    # A chunk from 10 frames before the episode's end runs past it: the pad mask marks exactly
    # the steps past the end, where lerobot repeats the episode's last action.
    item = ds[ep_len - 10]
    np.testing.assert_array_equal(item["action_is_pad"].numpy(), np.arange(H) >= 10)
    assert (item["action"][10:] == item["action"][9]).all()
    # The chunk's first action is the frame's own action.
    frame = ds.hf_dataset.with_format("numpy")[ep_len - 10]
    np.testing.assert_allclose(item["action"][0].numpy(), frame["action"])


def test_dataset_has_the_scene_state_and_its_stats(reach_dataset):
    """observation.environment_state is recorded, is the scene the seed made, and has stats."""
    from lerobot.datasets import LeRobotDataset

    from sim import SimEnv
    from sim.env import ENV_STATE

    root, summary = reach_dataset
    ds = LeRobotDataset("reach", root=root, video_backend="pyav")
    env = SimEnv("reach", render=False)
    assert ds.meta.features[ENV_STATE] == env.feature_spec()[ENV_STATE]
    table = ds.hf_dataset.select_columns(["episode_index", ENV_STATE]).with_format("numpy")
    states = np.stack(table[ENV_STATE])  # (T, 9)
    first = np.asarray(table["episode_index"]) == 0
    scene = env.reset(seed=summary.seeds[0])[ENV_STATE]
    assert (states[first] == scene).all()  # the reach targets stay put through an episode
    stats = ds.meta.stats[ENV_STATE]
    np.testing.assert_allclose(stats["mean"], states.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["min"], states.min(axis=0))
    np.testing.assert_allclose(stats["max"], states.max(axis=0))
    assert np.all(np.asarray(stats["std"]) > 0)  # the two episodes' targets differ


def test_replay_reproduces_states_and_success(reach_dataset):
    from sim import SimEnv
    from sim.replay import replay_dataset

    root, summary = reach_dataset
    replays = replay_dataset(SimEnv("reach", render=False), root, list(summary.seeds))
    assert [r.success for r in replays] == [True, True]
    assert max(r.max_state_error for r in replays) < 1e-5


def test_existing_output_and_leftovers_are_refused(reach_dataset, tmp_path):
    from sim import SimEnv
    from sim.record import partial_path, record_dataset

    root, _ = reach_dataset
    env = SimEnv("reach", render=False)
    with pytest.raises(FileExistsError, match="never overwrites"):
        record_dataset(env, root, episodes=1, progress=False)
    out = tmp_path / "ds"
    partial_path(out).mkdir()
    with pytest.raises(FileExistsError, match="left over, but it has no readable"):
        record_dataset(env, out, episodes=1, progress=False)
    with pytest.raises(ValueError, match="at least 1 episode"):
        record_dataset(env, tmp_path / "other", episodes=0, progress=False)
    with pytest.raises(ValueError, match="failure_prob"):
        record_dataset(env, tmp_path / "other", episodes=1, failure_prob=2.0, progress=False)


def test_interrupted_recording_keeps_finished_episodes(tmp_path, monkeypatch):
    """Ctrl-C in the middle of episode 2 leaves a loadable dataset holding episode 1."""
    from lerobot.datasets import LeRobotDataset

    import sim.record
    from sim import SimEnv

    calls = {"n": 0}
    real_step = SimEnv.step

    def step_then_interrupt(self, action):
        calls["n"] += 1
        if calls["n"] == 90:  # a reach episode lasts ~60 ticks: this is inside the second
            raise KeyboardInterrupt
        return real_step(self, action)

    monkeypatch.setattr(SimEnv, "step", step_then_interrupt)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        sim.record.record_dataset(SimEnv("reach", render=False), out, episodes=3, progress=False)
    assert not sim.record.partial_path(out).exists()
    ds = LeRobotDataset("ds", root=out, video_backend="pyav")
    assert ds.num_episodes == 1
    assert set(np.asarray(ds.hf_dataset["episode_index"]).tolist()) == {0}


def test_many_episodes_merge_whole_and_in_order(tmp_path):
    """Episodes are merged one data file each (lerobot's packing would rewrite its output per
    dataset added) and come out whole, in order, with a contiguous index."""
    from lerobot.datasets import LeRobotDataset

    import sim.record
    from sim import SimEnv

    out = tmp_path / "ds"
    summary = sim.record.record_dataset(SimEnv("reach", render=False), out, episodes=5,
                                        progress=False)  # fmt: skip
    ds = LeRobotDataset("ds", root=out, video_backend="pyav")
    assert ds.num_episodes == 5 and len(ds) == summary.frames
    table = ds.hf_dataset.select_columns(["episode_index", "frame_index", "index"])
    episodes = np.asarray(table["episode_index"])
    assert (np.diff(episodes) >= 0).all() and set(episodes.tolist()) == set(range(5))
    assert (np.asarray(table["index"]) == np.arange(len(ds))).all()
    first = SimEnv("reach", render=False).reset(seed=summary.seeds[3])[
        "observation.environment_state"
    ]
    state = np.stack(ds.hf_dataset.with_format("numpy")["observation.environment_state"])
    np.testing.assert_array_equal(state[episodes == 3][0], first)  # the 4th seed's scene
    assert not (sim.record.partial_path(out)).exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.commands.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_bad_config_gives_clear_errors(tmp_path):
    result = run_cli("record", "task=reach", "episodes=0", f"output={tmp_path / 'x'}")
    assert result.returncode == 2
    assert "episodes=0: record at least 1 episode" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("record", "task=nope", f"output={tmp_path / 'y'}")
    assert result.returncode != 0
    assert "nope" in result.stderr and "reach" in result.stderr  # hydra lists the options
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "unknown command" in result.stderr


# ---- durability: kill -9, a second Ctrl-C, resuming ---------------------------------------


def test_kill_9_between_episodes_keeps_them_and_the_next_run_resumes(tmp_path):
    import os
    import signal
    import time

    from lerobot.datasets import LeRobotDataset

    out = tmp_path / "ds"
    args = ["record", "task=reach", "render=false", "episodes=3", f"output={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "runtime.commands.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = out.with_name("ds.partial") / "episodes" / "episode_000000"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not out.exists()
    assert LeRobotDataset("ep", root=first, video_backend="pyav").num_episodes == 1
    result = run_cli(*args)  # the same recording again: resumes after the kept episode
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished episodes kept" in result.stdout + result.stderr  # hydra logs to stdout
    ds = LeRobotDataset("ds", root=out, video_backend="pyav")
    assert ds.num_episodes == 3
    assert not out.with_name("ds.partial").exists()


def test_a_second_ctrl_c_cannot_break_finalisation(tmp_path, monkeypatch):
    import os
    import signal

    from lerobot.datasets import LeRobotDataset
    from lerobot.datasets import aggregate as lerobot_aggregate

    import sim.record
    from sim import SimEnv

    real = lerobot_aggregate.aggregate_datasets

    def interrupted_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while merging
        return real(*args, **kwargs)

    monkeypatch.setattr(lerobot_aggregate, "aggregate_datasets", interrupted_twice)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        sim.record.record_dataset(SimEnv("reach", render=False), out, episodes=2, progress=False)
    assert LeRobotDataset("ds", root=out, video_backend="pyav").num_episodes == 2
    assert not sim.record.partial_path(out).exists()


def test_a_leftover_of_another_recording_is_refused_with_the_difference(tmp_path):
    import json

    from sim import SimEnv
    from sim.record import RECORDING_FILE, partial_path, record_dataset

    out = tmp_path / "ds"
    partial_path(out).mkdir()
    (partial_path(out) / RECORDING_FILE).write_text(json.dumps({"task": "reach", "seed": 7}))
    with pytest.raises(FileExistsError, match="seed: 7 then, 0 now"):
        record_dataset(SimEnv("reach", render=False), out, episodes=1, progress=False)


def test_recording_over_the_evaluation_seeds_warns(monkeypatch, caplog):
    from omegaconf import OmegaConf

    from runtime.commands import record

    class Summary:
        def as_dict(self):
            return {}

    class Env:
        def close(self):
            pass

    monkeypatch.setattr(record, "make_sim_env", lambda task, render: Env())
    monkeypatch.setattr(record, "record_dataset", lambda *a, **k: Summary())
    cfg = {"task": {"name": "reach"}, "render": True, "output": "x", "failure_prob": 0.0,
           "repo_id": None, "video": False, "extras": [], "max_attempts": 1}  # fmt: skip
    with caplog.at_level("WARNING"):
        record.main(OmegaConf.create({**cfg, "seed": 0, "episodes": 999}))
    assert not caplog.records
    with caplog.at_level("WARNING"):
        record.main(OmegaConf.create({**cfg, "seed": 0, "episodes": 1200}))
    assert "seeds 0..1199 include the default evaluation seeds" in caplog.text
    assert "seed=10000" in caplog.text
