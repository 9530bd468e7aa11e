"""The MuJoCo simulator: robot, environment, tasks and scripted demonstrators."""

import math

import numpy as np
import pytest

import sim
from sim import (
    JOINT_NAMES,
    TASKS,
    Labels,
    SimEnv,
    evaluate_demonstrator,
    make_demonstrator,
    make_env,
)
from sim.ik import DiffIK, closing_yaw, down_rotation
from sim.tasks.base import direction_words
from sim.tasks.conveyor import ConveyorDemonstrator
from sim.tasks.pick_place import PickPlaceDemonstrator
from sim.tasks.reach import ReachDemonstrator
from sim.tasks.track import TrackDemonstrator
from sim.units import to_follower


def run_episode(env: SimEnv, seed: int, failure: str | None = None) -> list[Labels]:
    """Reset with ``seed`` and run the demonstrator to the end; return the labels of every frame.

    ``failure`` forces the kind of failure the demonstrator injects (None: no failure).
    """
    env.reset(seed=seed)
    demonstrator = make_demonstrator(
        env, np.random.default_rng(seed), failure_prob=float(failure is not None)
    )
    demonstrator.failure = failure
    labels = []
    while not demonstrator.done:
        action, label = demonstrator.act()
        assert action.shape == (6,) and action.dtype == np.float32
        env.step(action)
        labels.append(label)
    return labels


@pytest.fixture(scope="module")
def envs() -> dict[str, SimEnv]:
    """One rendering-free environment per task, shared by the demonstrator tests."""
    made = {name: SimEnv(name, render=False) for name in TASKS}
    yield made
    for env in made.values():
        env.close()


def test_public_api() -> None:
    assert JOINT_NAMES == (
        "shoulder_pan",
        "shoulder_lift",
        "elbow_flex",
        "wrist_flex",
        "wrist_roll",
        "gripper",
    )
    assert set(TASKS) == {"reach", "pick_place", "track", "track_preview", "conveyor"}
    assert callable(sim.evaluate_demonstrator)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_builds_steps_and_renders(task: str) -> None:
    env = make_env(task, image_size=64)
    obs = env.reset(seed=0)
    assert env.instruction and env.tick == 0
    assert set(obs) == {
        "observation.state",
        "observation.environment_state",
        "observation.images.front",
        "observation.images.wrist",
    }
    assert obs["observation.state"].shape == (6,)
    assert obs["observation.state"].dtype == np.float32
    for cam in ("front", "wrist"):
        image = obs[f"observation.images.{cam}"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 5, f"{cam} image is nearly constant"
    obs = env.step(obs["observation.state"])
    assert env.tick == 1
    assert set(env.feature_spec()) == {"action", *obs}
    env.close()


def test_feature_spec() -> None:
    env = SimEnv("reach", image_size=32, cameras=("front",))
    spec = env.feature_spec()
    follower = [f"{name}.pos" for name in JOINT_NAMES]  # lerobot's SO-101 follower names
    assert spec["action"] == {"dtype": "float32", "shape": (6,), "names": follower}
    assert spec["observation.state"]["names"] == follower
    assert spec["observation.images.front"]["shape"] == (32, 32, 3)
    assert "observation.images.wrist" not in spec
    assert spec["observation.environment_state"] == {
        "dtype": "float32",
        "shape": (9,),
        "names": [f"target_{c}.{axis}" for c in ("red", "green", "blue") for axis in "xyz"],
    }
    env.close()
    no_images = SimEnv("reach", render=False)
    states = {"observation.state", "observation.environment_state"}
    assert set(no_images.feature_spec()) == {*states, "action"}
    assert set(no_images.observe()) == states


def test_actions_are_clipped(envs: dict[str, SimEnv]) -> None:
    env = envs["reach"]
    env.reset(seed=0)
    assert env.action_low.shape == env.action_high.shape == (6,)
    assert np.all(env.action_low < env.action_high)
    ctrl_low, ctrl_high = env.model.actuator_ctrlrange[env.robot.actuators].T  # rad and m
    np.testing.assert_allclose(env.action_high, to_follower(ctrl_high))
    assert env.action_low[5] == 0 and env.action_high[5] == 100  # the follower's gripper range
    env.step(np.full(6, 1e4, dtype=np.float32))
    np.testing.assert_allclose(env.data.ctrl[env.robot.actuators], ctrl_high, rtol=1e-6)
    env.step(np.full(6, -1e4, dtype=np.float32))
    np.testing.assert_allclose(env.data.ctrl[env.robot.actuators], ctrl_low, rtol=1e-6)
    with pytest.raises(ValueError, match="expected \\(6,\\)"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(6, np.nan))


def test_control_tick_is_exact() -> None:
    env = SimEnv("reach", render=False)
    assert env.n_substeps == 17 and env.model.opt.timestep <= 0.002
    assert math.isclose(env.n_substeps * env.model.opt.timestep, 1 / 30)
    fast = SimEnv("reach", render=False, control_hz=500)
    assert fast.n_substeps == 1 and math.isclose(fast.model.opt.timestep, 0.002)
    assert fast.max_steps == round(TASKS["reach"].max_steps * 500 / 30)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reset_is_deterministic(envs: dict[str, SimEnv], task: str) -> None:
    env = envs[task]
    first = env.reset(seed=7)["observation.state"], env.data.qpos.copy(), env.instruction
    env.step(env.action_high)
    again = env.reset(seed=7)["observation.state"], env.data.qpos.copy(), env.instruction
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]
    env.reset(seed=8)
    assert not np.array_equal(env.data.qpos, first[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "fold_laundry"}, "unknown task 'fold_laundry': choose one of"),
        ({"image_size": 8}, "image_size=8 must be an int in 16..1024"),
        ({"image_size": 2048}, "image_size"),
        ({"control_hz": 0.0}, "control_hz=0.0 must be > 0"),
        ({"control_hz": 1000.0}, "control_hz"),
        ({"cameras": ("top",)}, "cameras=\\('top',\\) must be distinct names from"),
        ({"cameras": ()}, "at least one"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict, match: str) -> None:
    kwargs = {"task": "reach", "render": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        SimEnv(kwargs.pop("task"), **kwargs)


def test_bad_failure_prob_is_rejected(envs: dict[str, SimEnv]) -> None:
    with pytest.raises(ValueError, match=r"failure_prob=1\.5 must be in"):
        make_demonstrator(envs["reach"], np.random.default_rng(0), failure_prob=1.5)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("seed", [0, 1])
def test_demonstrator_succeeds(envs: dict[str, SimEnv], task: str, seed: int) -> None:
    env = envs[task]
    labels = run_episode(env, seed)
    assert env.success(), f"{task} seed {seed}: demonstrator failed after {env.tick} ticks"
    assert env.tick <= env.max_steps  # track is judged at its end, the others finish early
    assert not any(label.correction for label in labels)
    assert all(label.corrective_instruction == "" for label in labels)
    steps = [label.step_instruction for label in labels]
    assert set(steps) <= set(env.task.phases())
    assert steps[0] == env.task.phases()[0] and steps[-1] == env.task.phases()[-1]


@pytest.mark.parametrize(
    ("task", "failure"),
    [("reach", kind) for kind in ReachDemonstrator.FAILURES]
    + [("pick_place", kind) for kind in PickPlaceDemonstrator.FAILURES]
    + [("track", kind) for kind in TrackDemonstrator.FAILURES]
    + [("conveyor", kind) for kind in ConveyorDemonstrator.FAILURES],
)
def test_demonstrator_recovers_from_failure(
    envs: dict[str, SimEnv], task: str, failure: str
) -> None:
    env = envs[task]
    labels = run_episode(env, seed=3, failure=failure)
    assert env.success(), f"{task} with {failure}: no recovery after {env.tick} ticks"
    corrections = [label for label in labels if label.correction]
    assert corrections, f"{task} with {failure}: no frame labelled as a correction"
    assert all(label.corrective_instruction for label in corrections)
    assert all(label.step_instruction in env.task.phases() for label in labels)


def test_evaluate_demonstrator() -> None:
    result = evaluate_demonstrator("reach", episodes=3, failure_prob=1.0, seed=5)
    assert result["episodes"] == 3 and result["failures_injected"] == 3
    assert result["success_rate"] == 1.0 and result["recovered"] == 3
    assert result["mean_episode_ticks"] > 0


def test_direction_words() -> None:
    assert direction_words(np.array([0.03, -0.005])) == "move forward"
    assert direction_words(np.array([-0.01, 0.03])) == "move left"
    assert direction_words(np.array([0.02, -0.02])) == "move forward and right"
    assert direction_words(np.array([0.0, 0.002, -0.03])) == "move down"


def test_ik_points_the_gripper_down(envs: dict[str, SimEnv]) -> None:
    env = envs["pick_place"]
    ik = DiffIK(env.model, env.robot)
    seed = np.array([0.0, 0.0, 0.0, np.pi / 2, 0.0])
    for target, yaw in [((0.2, 0.05, 0.03), 0.4), ((0.12, -0.1, 0.08), 2.0)]:
        q = ik.solve(seed, np.array(target), down_rotation(yaw))
        pos, rot = ik.forward(q)
        np.testing.assert_allclose(pos, target, atol=1e-3)
        np.testing.assert_allclose(rot[:, 0], [0, 0, -1], atol=1e-2)
        assert math.isclose(closing_yaw(rot), yaw, abs_tol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("failure_prob", [0.0, 1.0])
def test_demonstrator_success_rate(task: str, failure_prob: float) -> None:
    result = evaluate_demonstrator(task, episodes=100, failure_prob=failure_prob)
    assert result["success_rate"] >= 0.95, result


def test_track_is_judged_over_a_window_and_its_targets_move(envs: dict[str, SimEnv]) -> None:
    from sim.tasks.track import GRACE_S, MIN_ON_TARGET

    env = envs["track"]
    env.reset(seed=4)
    first = env.task.target_pos()
    home = env.observe()["observation.state"]
    for _ in range(env.max_steps - 1):  # the arm holds still: never on the target
        env.step(home)
        assert not env.success()  # success is only decided at the end of the episode
    assert np.linalg.norm(env.task.target_pos() - first) > 0.01
    env.step(home)
    assert env.task.time > GRACE_S and env.task.on_target_fraction() < MIN_ON_TARGET
    assert not env.success() and env.outcome()[1] in ("lagging", "far", "off_target")


@pytest.mark.parametrize("task", ["reach", "conveyor"])
def test_action_noise_is_seeded_and_moves_the_arm(task: str) -> None:
    def rollout(noise: float, seed: int) -> np.ndarray:
        env = SimEnv(task, render=False, action_noise=noise)
        env.reset(seed=seed)
        hold = env.observe()["observation.state"]
        for _ in range(10):
            env.step(hold)
        state = env.observe()["observation.state"]
        env.close()
        return state

    quiet, noisy = rollout(0.0, 1), rollout(0.05, 1)
    assert np.abs(noisy - quiet).max() > 1e-3
    np.testing.assert_array_equal(rollout(0.05, 1), noisy)  # the episode's seed fixes it
    assert not np.array_equal(rollout(0.05, 2), rollout(0.0, 2) + (noisy - quiet))
    with pytest.raises(ValueError, match="action_noise"):
        SimEnv("reach", render=False, action_noise=-0.1)


def test_conveyor_belt_carries_the_cubes_and_wraps_them(envs: dict[str, SimEnv]) -> None:
    from sim.tasks.conveyor import BELT_LENGTH, SPEED_RANGE

    env, colors = envs["conveyor"], ("red", "green", "blue")
    env.reset(seed=2)
    task = env.task
    assert SPEED_RANGE[0] <= task.speed <= SPEED_RANGE[1]
    before = {c: task.cube_pos(c) for c in colors}
    home = env.observe()["observation.state"]
    for _ in range(15):  # 0.5 s, the arm holds still above the belt
        env.step(home)
    for c in colors:
        moved = task.cube_pos(c) - before[c]
        if abs(moved[1]) < BELT_LENGTH / 2:  # this one did not wrap
            np.testing.assert_allclose(moved, 0.5 * task.belt_velocity(), atol=1e-3)
        np.testing.assert_allclose(task.cube_velocity(c), task.belt_velocity(), atol=1e-3)
    # A cube at the downstream end reappears at the upstream end.
    adr = env.model.joint("cube_red").qposadr[0]
    env.data.qpos[adr + 1] = task.belt_y(BELT_LENGTH + 0.001)  # just past the end
    env.step(home)
    assert task.belt_s(task.cube_pos("red")[1]) < 0.01
    assert task.on_belt("red")


def test_conveyor_grasped_cube_leaves_the_belt(envs: dict[str, SimEnv]) -> None:
    env = envs["conveyor"]
    env.reset(seed=1)
    task = env.task
    demonstrator = make_demonstrator(env, np.random.default_rng(1))
    while not demonstrator.done:
        action, labels = demonstrator.act()
        if labels.step_instruction == task.phases()[3]:  # lifted: carrying it to the bin
            break
        env.step(action)
    assert task.holding(task.color) and not task.on_belt(task.color)
    for c in ("red", "green", "blue"):
        if c != task.color:  # the others ride on
            np.testing.assert_allclose(task.cube_velocity(c), task.belt_velocity(), atol=1e-3)
    assert np.linalg.norm(task.cube_velocity(task.color) - task.belt_velocity()) > 0.01


def test_conveyor_stale_plan_lands_a_finger_on_a_fast_cube(envs: dict[str, SimEnv]) -> None:
    """Inference delay matters: aiming where the cube was 8 ticks (0.27 s) ago puts the
    downstream finger on top of a cube riding at 9 cm/s (2.4 cm travelled, over the 1.5 cm
    tolerance), never on one riding at 3 cm/s; the re-planning demonstrator never does."""
    from sim.tasks.conveyor import GRASP_Z, SPEED_RANGE

    class Stale(ConveyorDemonstrator):
        LEAD_S = ConveyorDemonstrator.LEAD_S - 8 / 30

    def lands_on_top(demonstrator_cls: type, speed: float, seed: int) -> bool:
        env = envs["conveyor"]
        env.reset(seed=seed)
        task = env.task
        task.speed = speed
        demonstrator = demonstrator_cls(env, np.random.default_rng(seed))
        while not demonstrator.done:
            action, labels = demonstrator.act()
            env.step(action)
            high = demonstrator.site_pos()[2] > GRASP_Z + 0.015
            if task.touching(task.color) and high:
                return True
            if labels.step_instruction == task.phases()[2] or labels.correction:
                return False  # lifting, or retrying: the first grasp is over
        return False

    slow, fast = SPEED_RANGE
    seeds = range(4)
    assert sum(lands_on_top(Stale, fast, s) for s in seeds) >= 3
    assert not any(lands_on_top(Stale, slow, s) for s in seeds)
    assert not any(lands_on_top(ConveyorDemonstrator, fast, s) for s in seeds)


def test_conveyor_episode_is_deterministic_per_seed(envs: dict[str, SimEnv]) -> None:
    env = envs["conveyor"]
    first = run_episode(env, seed=5, failure="knock"), env.data.qpos.copy(), env.tick
    again = run_episode(env, seed=5, failure="knock"), env.data.qpos.copy(), env.tick
    assert first[0] == again[0] and first[2] == again[2]
    np.testing.assert_array_equal(first[1], again[1])
