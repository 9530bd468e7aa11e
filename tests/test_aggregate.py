"""Pushes during policy rollouts (sim/disturb.py), the demonstrator's recovery from them, `rtvla run
failure_prob=`, and `rtvla aggregate` turning takeovers into correction episodes."""

import numpy as np
import pytest

from sim import SimEnv
from sim.disturb import Disturbance, Recovery


def run_recovery(env, recovery) -> list:
    """Step ``env`` through the demonstrator's takeover; the labels of each step."""
    steps = []
    while (step := recovery.act()) is not None:
        env.step(step[0])
        steps.append(step[1])
    return steps


def test_a_push_drags_the_arm_off_course_and_the_demonstrator_recovers():
    env = SimEnv("reach", render=False)
    push = Disturbance(env, probability=1.0, distance=0.04, duration_s=0.5, window=(0.1, 0.1))
    env.reset(seed=3)
    push.reset(np.random.default_rng(0))
    assert push.onset == round(0.1 * env.max_steps) and push.ticks == 15
    hold = env.data.qpos[env.robot.qpos].astype(np.float32)  # a policy that stays put
    while not push.finished:
        env.step(push(hold))
    site = env.data.site_xpos[env.robot.grip_site]
    assert 0.03 < np.linalg.norm(site - push.origin) < 0.05
    recovery = Recovery(env, np.random.default_rng(0), push.origin)
    steps = run_recovery(env, recovery)
    fixes = [labels for labels in steps if labels.correction]
    assert fixes and all(f.corrective_instruction.startswith("move ") for f in fixes)
    assert steps[0].correction and not steps[-1].correction  # the correction comes first
    assert env.success()
    env.close()


@pytest.mark.parametrize("kind", ["knock", "drop"])
def test_a_knock_or_a_drop_hits_the_named_cube_and_the_demonstrator_recovers(kind):
    """Driven by the scripted demonstrator (a policy that does the task), a knock fires when
    the open gripper first nears the named cube and slides it away; a drop fires when the cube
    is first carried and lets it fall. The takeover's recovery starts with its correction and
    puts the cube in the bin."""
    from sim.disturb import recovery_fix
    from sim.tasks import make_demonstrator

    env = SimEnv("pick_place", render=False)
    failure = Disturbance(env, 1.0, duration_s=0.5, kinds=("push", kind))
    seed = next(s for s in range(50)
                if (failure.reset(np.random.default_rng(s)), failure.kind)[1] == kind)  # fmt: skip
    env.reset(seed=1)
    failure.reset(np.random.default_rng(seed))
    assert failure.kind == kind and failure.onset is None  # it waits for its condition
    task, demo = env.task, make_demonstrator(env, np.random.default_rng(1), 0.0)
    before = task.cube_pos(task.color).copy()
    while failure.onset is None and not demo.done:
        env.step(failure(demo.act()[0]))
    assert failure.onset is not None
    while not failure.finished:
        env.step(failure(demo.act()[0]))
    cube = task.cube_pos(task.color)
    if kind == "knock":
        assert np.linalg.norm((cube - before)[:2]) > 0.02  # slid away
    else:
        assert cube[2] < 0.03 and not task.holding(task.color)  # fell
    fix = recovery_fix(env, kind)
    recovery = Recovery(env, np.random.default_rng(0), None, fix)
    steps = run_recovery(env, recovery)
    assert steps[0].correction and steps[0].corrective_instruction == fix
    assert not steps[-1].correction and env.success()
    env.close()


def test_the_miss_gate_calls_the_demonstrator_when_the_gripper_closes_on_nothing():
    """takeover_on=[miss]: closing the gripper away from the cube (after it was open) calls
    for a takeover, labelled "miss"; an open gripper, or one closing on the cube, does not.
    The demonstrator's recovery from there starts with "open the gripper and retry"."""
    from runtime.commands.aggregate import MISS_FIX, Takeover

    env = SimEnv("pick_place", render=False)
    env.reset(seed=1)
    nothing = Disturbance(env, probability=0.0)
    nothing.reset(np.random.default_rng(0))
    gate = Takeover(env, nothing, tolerance=0.01, after=0, on=("miss",))
    hold = env.observe()["observation.state"].copy()
    for _ in range(5):  # open (home): no call
        env.step(hold)
        assert not gate()
    closed, calls = hold.copy(), []
    closed[-1] = 0.0
    for _ in range(20):
        env.step(closed)
        calls.append(gate())
    assert any(calls) and gate.due and gate.reason == "miss"
    assert not env.task.holding(env.task.color)
    recovery = Recovery(env, np.random.default_rng(0), None, MISS_FIX)
    steps = run_recovery(env, recovery)
    assert steps[0].correction and steps[0].corrective_instruction == MISS_FIX
    assert env.success()
    with pytest.raises(ValueError, match="takeover_on"):
        Takeover(env, nothing, 0.01, 0, on=("stall",))

    from sim.tasks import make_demonstrator  # a clean run grasps the cube: never a call

    env.reset(seed=2)
    gate = Takeover(env, nothing, tolerance=0.01, after=0, on=("miss",))
    demo = make_demonstrator(env, np.random.default_rng(2), 0.0)
    calls = []
    while not demo.done:
        env.step(demo.act()[0])
        calls.append(gate())
    assert env.success() and not any(calls)
    env.close()


@pytest.mark.parametrize("failure", ["missed_grasp", "drop"])
def test_the_watching_operator_says_what_a_person_would(failure):
    """Watching the demonstrator fail: beside the cube at grasp height it gets a direction
    towards the cube; after a drop, "pick up the dropped cube"; silent on a clean run."""
    from runtime.robot.operator import WatchingOperator
    from sim.tasks import make_demonstrator

    env = SimEnv("pick_place", render=False)
    watcher = WatchingOperator(env, "robot0", hz=env.control_hz)

    def said(failure_prob: float, wanted: str | None) -> list[str]:
        for seed in range(40):
            env.reset(seed=seed)
            demo = make_demonstrator(env, np.random.default_rng(seed), failure_prob)
            if demo.failure == wanted:
                break
        words = []
        while not demo.done:
            words += [m.instruction for m in watcher(env.tick)]
            env.step(demo.act()[0])
        return words

    words = said(1.0, failure)
    if failure == "drop":
        assert "pick up the dropped cube" in words
    else:
        assert words and words[0].startswith("move ")
    assert said(0.0, None) == []
    with pytest.raises(ValueError, match="cube task"):
        WatchingOperator(SimEnv("reach", render=False), "robot0", hz=30)
    env.close()


def test_run_with_failure_prob_pushes_the_same_episodes_whatever_the_policy(tmp_path):
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    def run(num_steps: int, out: str) -> dict:
        overrides = [
            "task=reach", "executor=naive", "executor.execution_horizon=8", "episodes=4",
            "driver.render=false", "synthetic.chunk_length=16", f"synthetic.num_steps={num_steps}",
            "failure_prob=0.5", f"output_dir={tmp_path / out}",
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return main(compose(config_name="run", overrides=overrides))

    a, b = run(2, "a"), run(3, "b")
    assert a["push_ticks"] == b["push_ticks"]  # drawn from the episode seeds alone
    from runtime.robot.runlog import RunLog

    ticks = RunLog.from_npz(tmp_path / "a" / "episode_000.npz").ticks
    states = ticks["observation.state"]  # the joint state at the start of every tick
    assert states.shape == (len(ticks["tick"]), 6) and np.isfinite(states).all()
    env = SimEnv("reach", render=False)
    assert np.allclose(states[0], env.reset(seed=0)["observation.state"])  # episode 0: seed 0
    pushed = [t for t in a["push_ticks"] if t is not None]
    assert 0 < len(pushed) == a["pushed_episodes"] < 4
    assert a["pushed_success_rate"] == 0.0 and len(a["pushed_success_rate_ci95"]) == 2


@pytest.fixture(scope="module")
def tiny_hierarchy(reach_corrections_dataset, tmp_path_factory):
    """A low-level VLA (instruction=hierarchy) and a high-level policy, one step each."""
    from policies.hierarchy_train import train_high_level
    from policies.train import train

    root = tmp_path_factory.mktemp("hierarchy")
    base = {
        "dataset": str(reach_corrections_dataset), "steps": 1, "batch_size": 2, "lr": 1e-3,
        "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 1, "min_lr_ratio": 0.1,
        "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": False, "data": "memory",
        "num_workers": 0, "log_every": 1, "save_every": 1, "device": "cpu",
    }  # fmt: skip
    vla = {"name": "vla", "chunk_length": 10, "width": 32, "depth": 1, "num_heads": 2,
           "expert_width": 32, "patch_size": 24, "mlp_ratio": 2.0, "num_steps": 2,
           "fast_loss": False, "insulation": False}  # fmt: skip
    train({**base, "output": str(root / "low"), "instruction": "hierarchy", "policy": vla,
           "fast_tokenizer": None, "fast_fit_chunks": 16})  # fmt: skip
    high = {"name": "high_level", "channels": [8, 8, 8], "width": 32, "heldout_episodes": 0.0}
    train_high_level({**base, "output": str(root / "high"), "policy": high})
    return root / "low", root / "high"


def test_aggregate_records_the_demonstrator_corrections_and_merges_them(
    reach_corrections_dataset, tiny_hierarchy, tmp_path
):
    from hydra import compose, initialize_config_dir

    from policies.data import InMemoryChunks, open_dataset
    from runtime.commands.aggregate import main
    from runtime.commands.cli import CONFIG_DIR

    low, high = tiny_hierarchy
    overrides = [
        "task=reach", f"checkpoint={low}", f"high_level={high}",
        f"dataset={reach_corrections_dataset}", "episodes=2", "failure_prob=1",
        "executor.execution_horizon=5",
        f"output={tmp_path / 'merged'}", f"output_dir={tmp_path / 'log'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="aggregate", overrides=overrides)
    figures = main(cfg)
    assert figures["rollouts"] == figures["pushed"] == 2 and figures["takeovers"] >= 1
    recorded = figures["corrections_recorded"]
    assert recorded >= 1 and figures["correction_frames"] > 0

    original = open_dataset(reach_corrections_dataset).meta.total_episodes
    merged = open_dataset(tmp_path / "merged", chunk_length=10)
    assert merged.meta.total_episodes == original + recorded
    assert merged.meta.stats["observation.state"]["count"][0] == merged.meta.total_frames
    frames = InMemoryChunks(merged, 10)
    new = frames.episode >= original
    fixes = frames.correction & new
    assert fixes.sum() == figures["correction_frames"]
    words = {frames.texts["corrective_instruction"][i] for i in np.flatnonzero(fixes)}
    assert all(w.startswith("move ") for w in words)
    assert open_dataset(tmp_path / "merged_corrections").meta.total_episodes == recorded

    with pytest.raises(FileExistsError, match="already exists"):
        main(cfg)


@pytest.mark.slow  # records, trains two policies and runs 2 episodes: about a minute
def test_a_hierarchy_evaluation_with_injected_failures_logs_them_and_the_instructions(tmp_path):
    """End to end on pick_place without cameras: a state low level (instruction=hierarchy)
    and a state high level, evaluated on 2 episodes with an injected push and a scripted
    operator correction (knocks and drops fire on conditions a 2-step policy may never meet;
    the test above covers them). The run logs record the injected failure on its ticks,
    every instruction with its source, and the high level's correction probability."""
    from hydra import compose, initialize_config_dir

    from policies.hierarchy_train import train_high_level
    from policies.kinds import policy_defaults
    from policies.train import train
    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main
    from runtime.robot.runlog import RunLog
    from sim.record import record_dataset

    root = tmp_path / "pick"
    env = SimEnv("pick_place", render=False)
    record_dataset(env, root, episodes=2, seed=0, failure_prob=1.0, progress=False)
    env.close()
    common = {
        "dataset": str(root), "steps": 2, "batch_size": 8, "lr": 1e-3, "betas": [0.9, 0.95],
        "weight_decay": 0.0, "warmup_steps": 1, "min_lr_ratio": 0.1, "grad_clip": 1.0,
        "ema_decay": 0.9, "seed": 0, "resume": False, "data": "memory", "num_workers": 0,
        "log_every": 1, "save_every": 2, "device": "cpu",
    }  # fmt: skip
    low, high = tmp_path / "low", tmp_path / "high"
    train({**common, "output": str(low), "instruction": "hierarchy", "fast_tokenizer": None,
           "fast_fit_chunks": 8, "policy": {**policy_defaults()["state_flow"], "width": 32,
                                            "depth": 1}})  # fmt: skip
    train_high_level({**common, "output": str(high), "policy": {
        **policy_defaults()["high_level"], "width": 32, "heldout_episodes": 0.5}})  # fmt: skip
    overrides = [
        "task=pick_place", f"checkpoint={low}", f"high_level={high}", "episodes=2",
        "seed=1000", "driver.render=false", "failure_prob=1", "disturbance.kinds=[push]",
        "disturbance.window=[0.1,0.1]", "max_ticks=120", f"output_dir={tmp_path / 'eval'}",
        'operator_script=[{tick: 40, instruction: "move left", timeout_s: 0.5}]',
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        figures = main(compose(config_name="eval", overrides=overrides))
    assert figures["episodes"] == 2 and figures["failure_kinds"] == ["push", "push"]
    for k, kind in enumerate(figures["failure_kinds"]):
        ticks = RunLog.from_npz(tmp_path / "eval" / f"episode_{k:03d}.npz").ticks
        marked = set(ticks["injected"].tolist()) - {""}
        assert marked == ({kind} if kind else set())  # on its ticks, if it fired
        if kind:
            onset = figures["push_ticks"][k]
            assert ticks["injected"][list(ticks["tick"]).index(onset)] == kind
        said, source = ticks["instruction"].tolist(), ticks["instruction_source"].tolist()
        sources = dict(zip(said, source, strict=True))
        assert sources["move left"] == "operator"
        assert "high_level" in sources.values()
        chosen = ticks["instruction_source"] == "high_level"
        assert np.isfinite(ticks["correction"][chosen]).all()
    assert (tmp_path / "eval" / "instructions.png").is_file()
    latency = figures["override_latency_ticks"]  # sync, s = 8: the next chunk follows it
    assert figures["operator_overrides"] == 2 and latency["followed"] == 2
    assert 0 <= latency["median"] <= latency["max"] <= 8
