"""The state-based flow policy: trains, checkpoints, serves (ZMQ and in-process alike) and
runs an episode with the RTC executor, whose guidance differentiates through its network."""

import numpy as np
import pytest
import torch

TINY = {"name": "state_flow", "chunk_length": 8, "width": 32, "depth": 2, "num_steps": 3}


@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    """Two reach episodes without cameras, and a 4-step training run on them."""
    from policies.train import train
    from sim import SimEnv
    from sim.record import record_dataset

    root = tmp_path_factory.mktemp("state") / "reach"
    env = SimEnv("reach", render=False)
    record_dataset(env, root, episodes=2, seed=0, progress=False)
    env.close()
    out = root.parent / "run"
    cfg = {
        "dataset": str(root), "output": str(out), "steps": 4, "batch_size": 8, "lr": 1e-3,
        "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 1, "min_lr_ratio": 0.1,
        "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": False, "data": "memory",
        "num_workers": 0, "log_every": 1, "save_every": 4, "instruction": "task",
        "fast_tokenizer": None, "fast_fit_chunks": 8, "device": "cpu", "policy": TINY,
    }  # fmt: skip
    figures = train(cfg)
    assert figures["steps"] == 4 and np.isfinite(figures["fm"])
    return out


def request(policy, sampling="plain", prev=None, seed=3):
    from runtime.wire.protocol import ObservationRequest

    info = policy.info
    observation = {k: np.full(v["shape"], 0.1, np.float32) for k, v in info.features.items()}
    return ObservationRequest(
        request_id=1, robot_id="arm", tick=0, observation=observation,
        instruction="move the gripper to the red target", delay=2, execution_horizon=4,
        sampling=sampling, prev_actions=prev, seed=seed,
    )  # fmt: skip


def train_cfg(dataset, out, steps: int = 2, **policy) -> dict:
    """A tiny memory-data training config on ``dataset`` (TINY with ``policy`` overrides)."""
    return {
        "dataset": str(dataset), "output": str(out), "steps": steps, "batch_size": 8,
        "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 1,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": False,
        "data": "memory", "num_workers": 0, "log_every": 1, "save_every": steps,
        "instruction": "task", "fast_tokenizer": None, "fast_fit_chunks": 8, "device": "cpu",
        "policy": {**TINY, **policy},
    }  # fmt: skip


def test_served_over_zmq_and_in_process_give_the_same_chunk(state_run):
    from runtime.robot.client import ZmqPolicyClient
    from runtime.serving.loader import load_policy
    from runtime.serving.server import PolicyServer

    policy = load_policy(state_run)
    assert set(policy.info.features) == {
        "observation.state", "observation.environment_state"
    } and policy.info.chunk_length == 8  # fmt: skip
    local = policy.infer([request(policy)])[0]
    with PolicyServer(load_policy(state_run), "tcp://127.0.0.1:*") as server:
        server.start_in_thread()
        client = ZmqPolicyClient(server.address, timeout_s=10.0)
        try:
            client.submit(request(policy))
            reply = None
            for _ in range(200):
                if (reply := client.poll(0.05)) is not None:
                    break
        finally:
            client.close()
    np.testing.assert_allclose(reply.actions, local, atol=1e-5)


def test_rtc_guidance_flows_through_the_network(state_run):
    from policies.inference import load_flow_policy

    flow = load_flow_policy(state_run)
    velocity = flow.velocity_fn([request_like()])
    x = torch.zeros(1, 8, 6, requires_grad=True)
    velocity(x, torch.full((1,), 0.3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def request_like():
    class Request:
        observation = {  # noqa: RUF012
            "observation.state": np.zeros(6, np.float32),
            "observation.environment_state": np.zeros(9, np.float32),
        }
        instruction = "move the gripper to the red target"

    return Request()


def test_missing_environment_state_is_a_clear_error(state_run):
    from policies.inference import load_flow_policy

    flow = load_flow_policy(state_run)
    bad = request_like()
    bad.observation = {"observation.state": np.zeros(6, np.float32)}
    with pytest.raises(ValueError, match=r"no 'observation\.environment_state'"):
        flow.velocity_fn([bad])


def rtc_episode(checkpoint, output_dir, max_ticks: int) -> dict:
    """``rtvla eval`` of one reach episode of ``max_ticks`` with the rtc executor, in-process."""
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach", "executor=rtc", "executor.execution_horizon=4", "episodes=1",
        f"max_ticks={max_ticks}", "driver.render=false", "inference_delay_ticks=2",
        f"server=local:{checkpoint}", f"output_dir={output_dir}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return main(compose(config_name="run", overrides=overrides))


def test_one_episode_with_the_rtc_executor(state_run, tmp_path):
    figures = rtc_episode(state_run, tmp_path, 20)
    assert figures["episodes"] == 1 and figures["ticks"] == 20
    log = np.load(tmp_path / "episode_000.npz")
    assert len(log.files) > 0


def test_a_radian_checkpoint_converts_to_follower_units(state_run, tmp_path):
    """A checkpoint from the sim's older radian/metre datasets is refused by a follower-unit
    robot, and ``rtvla export units=follower`` turns it into one that acts exactly as it did,
    in degrees and 0-100 gripper units."""
    import json

    from safetensors.torch import load_file, save_file

    from policies.checkpoint import export_checkpoint
    from policies.normalize import MIN_STD
    from runtime.commands.export import to_follower_units
    from runtime.serving.loader import load_policy
    from runtime.wire.info import fit_problems
    from sim import JOINT_NAMES, SimEnv
    from sim.units import FEATURE_NAMES, SCALE, to_follower

    old = export_checkpoint(state_run, tmp_path / "old")  # made as the old sim would have
    meta = json.loads((old / "config.json").read_text())
    for key in ("observation.state", "action"):
        meta["features"][key]["names"] = list(JOINT_NAMES)
    (old / "config.json").write_text(json.dumps(meta))
    stats = load_file(old / "normalizer.safetensors")
    for name in [n for n in stats if n.startswith(("observation.state.", "action."))]:
        stats[name] = (stats[name].double() / torch.as_tensor(SCALE)).float()
        if name.endswith(".std"):  # as saved: floored (Normalizer's MIN_STD)
            stats[name] = stats[name].clamp(min=MIN_STD)
    save_file(stats, old / "normalizer.safetensors")

    old_policy = load_policy(old)
    env = SimEnv("reach", render=False)
    spec = env.feature_spec()
    problems = fit_problems(old_policy.info.features, 30.0, 6, spec, 30.0,
                            old_policy.info.joint_names)  # fmt: skip
    assert [p.split(" joints")[0] for p in problems] == [
        "the policy's action", "the policy's observation.state"]  # fmt: skip
    assert all("units=follower" in p and "shoulder_pan.pos" in p for p in problems)

    new = export_checkpoint(old, tmp_path / "new", convert=to_follower_units)
    new_policy = load_policy(new)
    assert new_policy.info.joint_names["action"] == FEATURE_NAMES
    assert fit_problems(new_policy.info.features, 30.0, 6, spec, 30.0,
                        new_policy.info.joint_names) == []  # fmt: skip
    obs = env.reset(seed=5)
    env.close()
    si_state = obs["observation.state"] / SCALE  # the old sim's radians and metres
    old_req, new_req = request(old_policy), request(new_policy)
    scene = obs["observation.environment_state"]
    old_req.observation.update(
        {"observation.state": si_state.astype(np.float32), "observation.environment_state": scene}
    )
    new_req.observation.update(
        {"observation.state": obs["observation.state"], "observation.environment_state": scene}
    )
    old_chunk = old_policy.infer([old_req])[0]  # (H, 6) rad and m
    new_chunk = new_policy.infer([new_req])[0]  # (H, 6) degrees and 0-100
    np.testing.assert_allclose(new_chunk, to_follower(old_chunk), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="already in follower units"):
        export_checkpoint(new, tmp_path / "again", convert=to_follower_units)


def test_relative_action_stats_count_every_step_inside_its_episode():
    from policies.data import InMemoryChunks

    items = object.__new__(InMemoryChunks)  # the fields the statistics read
    items.episode = np.array([0, 0, 0, 1, 1])
    items.ep_end = np.array([3, 3, 3, 5, 5])
    items.offsets = np.arange(2)
    items.state = torch.tensor([[1.0, 5], [2, 5], [3, 5], [10, 5], [20, 5]])
    items.action = torch.tensor([[2.0, 1], [3, 2], [4, 3], [11, 4], [21, 5]])
    mean, std = items.relative_action_stats([True, False])
    # steps inside: (0,0) (0,1) (1,1) (1,2) (2,2) (3,3) (3,4) (4,4): frame t, chunk step t + k
    rel = [2 - 1, 3 - 1, 3 - 2, 4 - 2, 4 - 3, 11 - 10, 21 - 10, 21 - 20]
    grip = [1, 2, 2, 3, 3, 4, 5, 5]  # not relative: the action itself
    np.testing.assert_allclose(mean, [np.mean(rel), np.mean(grip)])
    np.testing.assert_allclose(std, [np.std(rel), np.std(grip)])


def test_relative_actions_are_offsets_from_the_observed_state(state_run):
    """A model of relative actions and the same model of absolute ones, given the same noise,
    give chunks that differ by exactly the observed state on the relative dims; a previous
    chunk is taken relative to the new observation before guidance compares with it."""
    from runtime.serving.loader import load_policy

    policy = load_policy(state_run)
    flow = policy.model
    with torch.no_grad():
        flow.model.action_out.weight.zero_()  # velocity 0: a chunk is its unnormalized noise
        flow.model.action_out.bias.zero_()
    req = request(policy)
    state = np.array([10.0, -20, 30, 40, 50, 60], np.float32)
    req.observation["observation.state"] = state
    first = policy.infer([req])[0]
    flow.relative_mask = (True,) * 5 + (False,)
    second = policy.infer([req])[0]
    np.testing.assert_allclose(second - first, np.tile(np.r_[state[:5], 0], (8, 1)), atol=1e-4)
    prev = np.tile(state + 1, (6, 1)).astype(np.float32)
    guided = request(policy, "guided:exp", prev=prev)
    guided.observation["observation.state"] = state
    expected = flow.normalize_actions(np.tile(np.r_[np.ones(5), state[5] + 1], (6, 1)))
    torch.testing.assert_close(policy._previous([guided])[0, :6], expected.float())


def test_a_relative_action_policy_trains_and_serves(state_run, tmp_path):
    from policies.train import train
    from runtime.serving.loader import load_policy

    dataset = state_run.parent / "reach"
    out = tmp_path / "relative"
    cfg = train_cfg(dataset, out, relative_actions=True)
    train(cfg)
    policy = load_policy(out)
    assert policy.model.relative_mask == (True,) * 5 + (False,)  # every joint but the gripper
    chunk = policy.infer([request(policy, "guided:exp", prev=np.zeros((8, 6), np.float32))])[0]
    assert chunk.shape == (8, 6) and np.isfinite(chunk).all()
    with pytest.raises(ValueError, match="data=memory"):
        train({**cfg, "output": str(tmp_path / "lerobot"), "data": "lerobot"})


def test_history_items_clamp_to_the_episode_start_and_normalize_the_changes():
    from policies.data import InMemoryChunks

    items = object.__new__(InMemoryChunks)  # the fields the history reads
    items.ep_start = np.array([0, 0, 0, 3, 3])
    items.history_offsets = np.array([-2, -1])
    np.testing.assert_array_equal(
        items.history_index(np.arange(5)), [[0, 0], [0, 0], [0, 1], [3, 3], [3, 3]]
    )
    items.episode = np.array([0, 0, 0, 1, 1])
    items.state = torch.tensor([[0.0], [1], [3], [10], [20]])
    items.env_state = torch.zeros(5, 2)
    stats = items.history_change_stats()
    mean, std = stats["observation.state.history"]
    # changes since 2 frames before: 0 1 3 0 10; since 1 frame before: 0 1 2 0 10
    np.testing.assert_allclose(std, [[np.std([0, 1, 3, 0, 10])], [np.std([0, 1, 2, 0, 10])]])
    assert mean.shape == (2, 1) and not mean.any()
    assert stats["observation.environment_state.history"][1].shape == (2, 2)


def test_a_policy_with_state_history_trains_serves_and_runs_an_episode(state_run, tmp_path):
    """history_offsets: the checkpoint asks for the earlier ticks in its metadata, the served
    policy refuses a request without them, and the controller sends them (rtc, one episode)."""
    from policies.train import train
    from runtime.serving.loader import load_policy

    out = tmp_path / "history"
    cfg = train_cfg(state_run.parent / "reach", out, history_offsets=[-6, -3])
    train(cfg)
    policy = load_policy(out)
    info = policy.info
    assert info.observation_history == (-6, -3)
    assert tuple(info.features["observation.state.history"]["shape"]) == (2, 6)
    chunk = policy.infer([request(policy)])[0]
    assert chunk.shape == (8, 6) and np.isfinite(chunk).all()
    bare = request(policy)
    del bare.observation["observation.state.history"]
    with pytest.raises(ValueError, match=r"observation\.state\.history"):
        policy.infer([bare])

    figures = rtc_episode(out, tmp_path / "eval", 12)
    assert figures["episodes"] == 1 and figures["ticks"] == 12 and figures["request_errors"] == 0
    with pytest.raises(ValueError, match="history_offsets"):
        train({**cfg, "output": str(tmp_path / "bad"), "policy": {**TINY, "history_offsets": [3]}})


def test_a_policy_trained_on_lagging_prefixes_trains_and_serves_prefix_requests(
    state_run, tmp_path
):
    from policies.state_flow import StateFlowConfig
    from policies.train import train
    from runtime.serving.loader import load_policy

    with pytest.raises(ValueError, match="rtc_training_max_delay=K > 0"):
        StateFlowConfig(rtc_training_lag_prob=0.5, rtc_training_max_lag=3.0)
    with pytest.raises(ValueError, match=r"rtc_training_lag_prob=1\.5"):
        StateFlowConfig(rtc_training_max_delay=2, rtc_training_lag_prob=1.5)
    out = tmp_path / "lagging"
    cfg = train_cfg(state_run.parent / "reach", out, rtc_training_max_delay=3,
                    rtc_training_lag_prob=0.5, rtc_training_max_lag=3.0)  # fmt: skip
    figures = train(cfg)
    assert np.isfinite(figures["fm"])
    policy = load_policy(out)
    assert policy.model.model.config.rtc_training_lag_prob == 0.5
    prev = np.linspace(0, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
    chunk = policy.infer([request(policy, "prefix", prev=prev)])[0]
    assert np.allclose(chunk[:2], prev[:2], atol=1e-4)  # the d = 2 actions under way, kept


def test_a_sweep_samples_with_its_own_number_of_euler_steps(state_run):
    """num_steps=N overrides the checkpoint's steps for the sweep's policies; null keeps them."""
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import make_client

    steps = {}
    for value in ("2", "null"):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("sweep", [f"checkpoint={state_run}", f"num_steps={value}"])
        client = make_client(cfg, action_dim=6)
        steps[value] = client.policy.num_steps
        client.close()
    assert steps == {"2": 2, "null": TINY["num_steps"]}
