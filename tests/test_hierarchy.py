"""SRT-H's high level: label look-ahead, instruction selection, training and checkpoints, the
runner's history and smoothing, and the controller's choice of instruction source."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policies.hierarchy import (
    IGNORE,
    HighLevelConfig,
    HighLevelModel,
    HighLevelPolicy,
    Prediction,
    Vocabulary,
    history_indices,
    label_indices,
)
from policies.normalize import Normalizer

CAM = "observation.images.front"
TINY = {"channels": [8, 8], "width": 32, "dropout": 0.0, "augment_shift": 0}


class Frames:
    """What ``HighLevelFrames`` reads from ``InMemoryChunks``: two episodes of 20 and 40
    frames, frame t labelled "step t" and, from frame 30 on, corrected with "fix t"."""

    def __init__(self) -> None:
        n, side = 60, 16
        self.ep_start = np.r_[np.zeros(20, int), np.full(40, 20)]
        self.ep_end = np.r_[np.full(20, 20), np.full(40, 60)]
        self.correction = np.arange(n) >= 30
        self.texts = {
            "step_instruction": [f"step {t}" for t in range(n)],
            "corrective_instruction": [f"fix {t}" if t >= 30 else "" for t in range(n)],
        }
        self.task = ["reach the red target"] * n
        self.state = torch.zeros(n, 6)
        self.images = {CAM: torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(
            n, 3, side, side).contiguous()}  # fmt: skip  # frame t is filled with t

    def __len__(self) -> int:
        return len(self.state)


def identity_normalizer(dim: int = 6) -> Normalizer:
    return Normalizer({"observation.state": np.zeros(dim)}, {"observation.state": np.ones(dim)})


def test_labels_are_read_lookahead_ahead_clamped_to_the_episode():
    from policies.hierarchy_train import HighLevelFrames

    frames = Frames()
    vocab = Vocabulary.build(frames.texts["step_instruction"],
                             frames.texts["corrective_instruction"], frames.task)  # fmt: skip
    config = HighLevelConfig(image_keys=(CAM,), image_size=(16, 16), history=3, stride=4,
                             label_lookahead_s=0.5, **TINY)  # fmt: skip
    items = HighLevelFrames(frames, config, vocab, identity_normalizer(), fps=30.0)
    shift = round(0.5 * 30)  # 15 frames
    for t in range(60):
        end = 20 if t < 20 else 60
        expected = min(t + shift, end - 1)
        item = items[t]
        assert vocab.step[int(item["step"])] == f"step {expected}", t
        assert bool(item["correction"]) == (expected >= 30)
        if expected >= 30:
            assert vocab.corrective[int(item["corrective"])] == f"fix {expected}"
        else:
            assert int(item["corrective"]) == IGNORE
        start = 0 if t < 20 else 20
        seen = item[CAM][:, 0, 0, 0].tolist()  # (T,) frame numbers, oldest first
        assert seen == [max(t - 8, start), max(t - 4, start), t]
    np.testing.assert_array_equal(label_indices(np.array([0, 5, 19]), np.full(3, 20), 15),
                                  [15, 19, 19])  # fmt: skip
    np.testing.assert_array_equal(history_indices(np.array([21]), np.array([20]), 3, 4),
                                  [[20, 20, 21]])  # fmt: skip


def test_vocabulary_round_trip_and_an_overfit_model_selects_the_right_instructions():
    vocab = Vocabulary.build(
        ["reach the red target", "move above the red target"] * 2,
        ["", "move left", "move right", ""],
        ["Move the gripper to the red target"],
    )
    assert vocab.step == ("move above the red target", "reach the red target")
    assert vocab.corrective == ("move left", "move right")
    assert "gripper" in vocab.words and vocab.word_ids("the RED thing") == [
        vocab.words.index("the") + 1, vocab.words.index("red") + 1]  # fmt: skip
    for kind in ("step", "corrective"):
        for i, text in enumerate(getattr(vocab, kind)):
            assert vocab.index(kind, text) == i
    with pytest.raises(KeyError, match="not a step instruction"):
        vocab.index("step", "dance")
    assert Vocabulary.from_dict(json.loads(json.dumps(vocab.as_dict()))) == vocab

    # Four scenes, each with its own instruction pair; a model overfit on them picks each.
    torch.manual_seed(0)
    config = HighLevelConfig(image_keys=(CAM,), image_size=(16, 16), history=2, step_classes=2,
                             corrective_classes=2, word_count=len(vocab.words), **TINY)  # fmt: skip
    model = HighLevelModel(config)
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8) for _ in range(4)]
    labels = [(0, IGNORE, 0), (1, IGNORE, 0), (0, 0, 1), (1, 1, 1)]  # step, corrective, flag
    policy = HighLevelPolicy(model, identity_normalizer(), vocab, fps=30.0)
    task = "move the gripper to the red target"
    observations = [[{CAM: f, "observation.state": np.zeros(6, np.float32)} for f in s]
                    for s in scenes]  # fmt: skip
    batches = [policy.batch(obs, task) for obs in observations]
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    batch["step"], batch["corrective"], batch["correction"] = (
        torch.tensor(col) for col in zip(*labels, strict=True))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend
    try:
        for _ in range(80):
            loss, _ = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for obs, (step, corrective, flag) in zip(observations, labels, strict=True):
        p = policy.predict(obs, task)
        assert vocab.step[int(p.step.argmax())] == vocab.step[step]
        assert (p.correction > 0.5) == bool(flag)
        if flag:
            assert vocab.corrective[int(p.corrective.argmax())] == vocab.corrective[corrective]


def test_high_level_trains_two_steps_resumes_and_its_checkpoint_loads(
    reach_corrections_dataset, tmp_path
):
    from hydra import compose, initialize_config_dir

    from policies.checkpoint import load_checkpoint
    from policies.data import open_dataset
    from policies.hierarchy import load_high_level
    from runtime.commands.cli import CONFIG_DIR, register_policy_configs
    from runtime.commands.train import main

    def cfg(steps: int, resume: bool = False):
        overrides = [
            "policy=high_level", f"dataset={reach_corrections_dataset}", f"output={tmp_path}",
            f"steps={steps}", "batch_size=4", "save_every=2", "log_every=1", "device=cpu",
            "warmup_steps=1", "policy.channels=[8,8,8]", "policy.width=32",
            "policy.heldout_episodes=0.5", f"resume={str(resume).lower()}",
        ]  # fmt: skip
        register_policy_configs()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)

    figures = main(cfg(2))
    assert figures["steps"] == 2 and set(figures) >= {"step_ce", "corrective_ce", "correction_bce"}
    heldout = figures["heldout"]
    assert heldout["frames"] > 0 and heldout["correction_frames"] > 0
    assert 0.0 <= heldout["step_accuracy"] <= 1.0
    assert json.loads((tmp_path / "heldout.json").read_text()) == heldout
    resumed = main(cfg(3, resume=True))
    assert resumed["steps"] == 3 and resumed["trained_steps"] == 1

    policy = load_high_level(tmp_path)
    assert policy.vocab.corrective and all(c.startswith("move") for c in policy.vocab.corrective)
    assert (
        "reach the red target" in policy.vocab.step or "reach the blue target" in policy.vocab.step
    )
    item = open_dataset(reach_corrections_dataset)[0]
    obs = {k: (v.permute(1, 2, 0) * 255).to(torch.uint8).numpy() for k, v in item.items()
           if k.startswith("observation.images.")}  # fmt: skip
    obs["observation.state"] = item["observation.state"].numpy()
    p = policy.predict([obs] * policy.config.history, item["task"])
    assert p.step.shape == (len(policy.vocab.step),) and abs(p.step.sum() - 1) < 1e-5
    assert p.corrective.shape == (len(policy.vocab.corrective),) and 0 <= p.correction <= 1
    with pytest.raises(ValueError, match="not a VLA checkpoint"):
        load_checkpoint(tmp_path)


def test_a_high_level_without_cameras_reads_the_scene_state(tmp_path):
    """On a dataset without cameras the high level reads the history of state and
    environment state; its checkpoint predicts from such observations and says what is
    missing when an observation lacks the scene state."""
    from policies.hierarchy import load_high_level
    from policies.hierarchy_train import train_high_level
    from policies.kinds import policy_defaults
    from sim import SimEnv
    from sim.record import record_dataset

    root = tmp_path / "pick"
    env = SimEnv("pick_place", render=False)
    record_dataset(env, root, episodes=2, seed=0, failure_prob=1.0, progress=False)
    policy_cfg = {**policy_defaults()["high_level"], "channels": [8], "width": 32,
                  "heldout_episodes": 0.5}  # fmt: skip
    cfg = {
        "dataset": str(root), "output": str(tmp_path / "hl"), "steps": 3, "batch_size": 8,
        "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 1,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": False,
        "data": "memory", "num_workers": 0, "log_every": 1, "save_every": 3,
        "device": "cpu", "policy": policy_cfg,
    }  # fmt: skip
    figures = train_high_level(cfg)
    assert figures["steps"] == 3 and figures["heldout"]["frames"] > 0
    policy = load_high_level(tmp_path / "hl")
    obs = env.reset(seed=5)
    env_dim = len(obs["observation.environment_state"])
    assert policy.config.image_keys == () and policy.config.env_state_dim == env_dim
    p = policy.predict([obs] * policy.config.history, env.instruction)
    assert p.step.shape == (len(policy.vocab.step),) and abs(p.step.sum() - 1) < 1e-5
    other = policy.predict(
        [{**obs, "observation.environment_state": obs["observation.environment_state"] + 0.05}]
        * policy.config.history,
        env.instruction,
    )
    assert not np.allclose(p.step, other.step)  # the scene state reaches the prediction
    bare = {k: v for k, v in obs.items() if k != "observation.environment_state"}
    with pytest.raises(ValueError, match="environment_state"):
        policy.predict([bare] * policy.config.history, env.instruction)
    env.close()


class ScriptedHighLevel:
    """A high-level policy whose predictions are given in advance; records what it read."""

    def __init__(self, predictions: list[Prediction], history: int = 3, stride: int = 2):
        self.config = SimpleNamespace(history=history, stride=stride)
        self.vocab = Vocabulary(step=("a", "b"), corrective=("move left",), words=())
        self.predictions, self.read = iter(predictions), []

    def predict(self, frames, task):
        self.read.append([f["tick"] for f in frames])
        return next(self.predictions)


def test_runner_reads_its_history_and_smooths_its_choice():
    from runtime.serving.hierarchy import HighLevelRunner

    def pred(step_b: float, flag: float) -> Prediction:
        return Prediction(np.array([1 - step_b, step_b]), np.array([1.0]), flag)

    policy = ScriptedHighLevel([pred(0.0, 0.9), pred(1.0, 0.9), pred(1.0, 0.0), pred(1.0, 0.0)])
    runner = HighLevelRunner(policy, every=4, smoothing=0.5)
    runner.reset("do it")
    observed, chosen = [], []

    def observe(tick):
        observed.append(tick)
        return {"tick": tick}

    for tick in range(13):
        runner.update(tick, lambda t=tick: observe(t))
        chosen.append(runner.instruction)
    assert policy.read == [[0, 0, 0], [0, 2, 4], [4, 6, 8], [8, 10, 12]]
    assert observed == [0, 2, 4, 6, 8, 10, 12]  # only the frames some prediction reads
    # flag 0.9, 0.9, then smoothed 0.45 < 0.5: the corrective gives way to the step instruction
    assert chosen[0] == chosen[4] == "move left" and chosen[8] == "b"
    assert runner.correction == pytest.approx(0.225)


def test_a_runner_without_corrections_sends_the_step_instruction_whatever_the_flag():
    from runtime.serving.hierarchy import HighLevelRunner

    flagged = Prediction(np.array([0.2, 0.8]), np.array([1.0]), 0.95)
    for corrections, expected in ((True, "move left"), (False, "b")):
        runner = HighLevelRunner(ScriptedHighLevel([flagged]), every=4, corrections=corrections)
        runner.reset("do it")
        runner.update(0, lambda: {"tick": 0})
        assert runner.instruction == expected and runner.correction == pytest.approx(0.95)


def test_a_low_level_with_the_task_is_trained_and_sent_the_choice_then_the_task():
    from policies.data import check_instruction_source, instruction_of, with_task

    item = {"task": "put the red cube in the left bin", "step_instruction": "grasp the red cube",
            "corrective_instruction": "open the gripper and retry", "correction": True}  # fmt: skip
    assert instruction_of(item, "hierarchy+task") == (
        "open the gripper and retry ; put the red cube in the left bin"
    )
    assert instruction_of({**item, "correction": False}, "hierarchy+task") == with_task(
        "grasp the red cube", item["task"]
    )
    with pytest.raises(ValueError, match="correction"):
        check_instruction_source({"step_instruction": {}}, "hierarchy+task")


@pytest.mark.parametrize("joined", [False, True])
def test_controller_sends_the_high_level_choice_unless_an_operator_overrides_it(
    jump_driver, joined
):
    from policies.data import with_task
    from runtime.robot.client import LocalPolicyClient
    from runtime.robot.clock import SimClock
    from runtime.robot.controller import Controller
    from runtime.robot.executors import make_executor
    from runtime.robot.operator import scripted_operator
    from runtime.robot.testing import ConstantPolicy, RecordingPolicy

    class HighLevel:  # chooses nothing before tick 10, then "b"
        instruction = None

        def reset(self, task):
            self.instruction = None

        def update(self, tick, observe):
            if tick == 10:
                self.instruction = "b"

    policy = RecordingPolicy(ConstantPolicy(8, 2, model_id="zeros"))
    client = LocalPolicyClient(policy)
    ctl = Controller(
        jump_driver, client, make_executor("naive", 8, execution_horizon=2, initial_delay=1),
        SimClock(30),
        instruction="the task", inference_delay_ticks=1, high_level=HighLevel(),
        operator_script=scripted_operator([{"tick": 20, "instruction": "stop", "timeout_s": 0.5}],
                                          "robot"),
        join_task=with_task if joined else None,
    )  # fmt: skip
    log = ctl.run(50)
    client.close()
    by_tick = {r.tick: r.instruction for r in policy.requests}
    for tick, instruction in by_tick.items():
        expected = "the task" if tick < 10 else "stop" if 20 <= tick < 35 else "b"
        if joined and tick >= 10:  # a hierarchy+task low level: the choice, then the task
            expected = with_task(expected, "the task")
        assert instruction == expected, tick
    source = log.ticks["instruction_source"]
    assert source[0] == "task" and source[10] == "high_level" and source[20] == "operator"
    assert source[35] == "high_level"
