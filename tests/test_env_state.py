"""The tasks' scene state, lerobot's ``observation.environment_state``."""

import math

import mujoco
import numpy as np
import pytest

from sim import TASKS, SimEnv, make_demonstrator
from sim.env import ENV_STATE, GRIP_NAMES


@pytest.fixture(scope="module")
def envs() -> dict[str, SimEnv]:
    """One rendering-free environment per task."""
    made = {name: SimEnv(name, render=False) for name in TASKS}
    yield made
    for env in made.values():
        env.close()


def named(env: SimEnv) -> dict[str, float]:
    """The current scene state by element name."""
    return dict(zip(env.task.environment_names(), env.observe()[ENV_STATE], strict=True))


def test_keys_are_lerobots() -> None:
    """sim imports neither runtime nor (at import time) lerobot, so it spells the keys itself."""
    from lerobot.utils import constants

    from sim import env

    assert (env.STATE, env.ENV_STATE) == (constants.OBS_STATE, constants.OBS_ENV_STATE)
    assert env.IMAGES == constants.OBS_IMAGES + "."


@pytest.mark.parametrize("task", sorted(TASKS))
def test_state_matches_its_names_and_spec(envs: dict[str, SimEnv], task: str) -> None:
    env = envs[task]
    state = env.reset(seed=0)[ENV_STATE]
    names = env.task.environment_names()
    assert state.dtype == np.float32 and state.shape == (len(names),)
    assert np.all(np.isfinite(state))
    assert len(set(names)) == len(names)
    assert env.feature_spec()[ENV_STATE] == {
        "dtype": "float32",
        "shape": (len(names),),
        "names": names,
    }


@pytest.mark.parametrize("task", sorted(TASKS))
def test_state_follows_the_reset_seed(envs: dict[str, SimEnv], task: str) -> None:
    env = envs[task]
    first = env.reset(seed=0)[ENV_STATE]
    names = env.task.environment_names()
    np.testing.assert_array_equal(env.reset(seed=0)[ENV_STATE], first)
    assert not np.allclose(env.reset(seed=1)[ENV_STATE], first)
    assert env.task.environment_names() == names  # the layout never depends on the episode


def test_reach_state_holds_the_named_target(envs: dict[str, SimEnv]) -> None:
    env = envs["reach"]
    env.reset(seed=2)
    state = named(env)
    target = [state[f"target_{env.task.color}.{axis}"] for axis in "xyz"]
    np.testing.assert_allclose(target, env.task.target_pos(), atol=1e-6)


def test_pick_place_state_tracks_the_lifted_cube(envs: dict[str, SimEnv]) -> None:
    env = envs["pick_place"]
    env.reset(seed=0)
    task = env.task
    body = env.model.body(f"cube_{task.color}").id
    demonstrator = make_demonstrator(env, np.random.default_rng(0))

    def lifted() -> bool:  # held 3.5 cm above where it lay
        return task.holding(task.color) and task.cube_pos(task.color)[2] > 0.05

    while not demonstrator.done and not lifted():
        env.step(demonstrator.act()[0])
    assert lifted(), f"the demonstrator did not lift the cube in {env.tick} ticks"
    state = named(env)
    cube = [state[f"cube_{task.color}.{axis}"] for axis in "xyz"]
    np.testing.assert_allclose(cube, env.data.xpos[body], atol=1e-3)
    yaw = state[f"cube_{task.color}.cos4yaw"], state[f"cube_{task.color}.sin4yaw"]
    assert math.isclose(math.hypot(*yaw), 1.0, rel_tol=1e-5)


def turn_cube(env: SimEnv, color: str, angle: float) -> np.ndarray:
    """Turn the cube by ``angle`` about the vertical; return the new scene state."""
    adr = env.model.joint(f"cube_{color}").qposadr[0]
    quat = env.data.qpos[adr + 3 : adr + 7]  # a view: written in place
    turn = np.array([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])
    mujoco.mju_mulQuat(quat, turn, quat.copy())
    mujoco.mj_forward(env.model, env.data)
    return env.observe()[ENV_STATE]


def test_pick_place_yaw_ignores_quarter_turns(envs: dict[str, SimEnv]) -> None:
    """A cube turned by 90 degrees looks the same, and so does its state; 45 degrees does not."""
    env = envs["pick_place"]
    before = env.reset(seed=0)[ENV_STATE]
    np.testing.assert_allclose(turn_cube(env, "red", math.pi / 2), before, atol=1e-5)
    assert not np.allclose(turn_cube(env, "red", math.pi / 4), before, atol=1e-2)


@pytest.mark.parametrize(
    ("task", "untouched"),
    [("reach", None), ("pick_place", "no_grasp"), ("track", None), ("conveyor", "no_grasp")],
)
def test_outcome_names_the_failure_class_and_none_after_the_demonstrator(task, untouched):
    from sim import SimEnv, make_demonstrator
    from sim.tasks.conveyor import FAILURES as CONVEYOR_FAILURES
    from sim.tasks.pick_place import FAILURES as PICK_FAILURES
    from sim.tasks.reach import FAILURES as REACH_FAILURES
    from sim.tasks.track import FAILURES as TRACK_FAILURES

    env = SimEnv(task, render=False)
    env.reset(seed=3)
    distance, failure = env.outcome()
    assert failure in (*REACH_FAILURES, *PICK_FAILURES, *TRACK_FAILURES, *CONVEYOR_FAILURES)
    assert untouched is None or failure == untouched
    assert distance > 0.02
    demonstrator = make_demonstrator(env, np.random.default_rng(3))
    while not demonstrator.done and not env.success():
        action, _ = demonstrator.act()
        env.step(action)
    for _ in range(15 if task != "track" else 0):  # let it settle
        env.step(action)
    assert env.success() and env.outcome()[1] is None
    env.close()


def test_track_state_holds_positions_and_their_velocities(envs: dict[str, SimEnv]) -> None:
    env = envs["track"]
    env.reset(seed=2)
    before = named(env)
    env.step(env.observe()["observation.state"])
    after = named(env)
    dt = 1.0 / env.control_hz
    for color in ("red", "green", "blue"):
        for axis in "xyz":
            moved = (after[f"target_{color}.{axis}"] - before[f"target_{color}.{axis}"]) / dt
            mean_v = (after[f"target_{color}.v{axis}"] + before[f"target_{color}.v{axis}"]) / 2
            assert moved == pytest.approx(mean_v, abs=2e-3)
    target = env.task.target_pos()
    assert [after[f"target_{env.task.color}.{a}"] for a in "xyz"] == pytest.approx(target, abs=1e-6)


def test_conveyor_state_holds_cubes_their_velocities_and_the_bin(envs: dict[str, SimEnv]) -> None:
    env = envs["conveyor"]
    env.reset(seed=2)
    env.step(env.observe()["observation.state"])
    state, task = named(env), env.task
    assert len(state) == 27
    for color in ("red", "green", "blue"):
        position = [state[f"cube_{color}.{a}"] for a in "xyz"]
        velocity = [state[f"cube_{color}.v{a}"] for a in "xyz"]
        np.testing.assert_allclose(position, task.cube_pos(color), atol=1e-6)
        np.testing.assert_allclose(velocity, task.belt_velocity(), atol=1e-3)  # all ride
        yaw = state[f"cube_{color}.cos4yaw"], state[f"cube_{color}.sin4yaw"]
        assert math.isclose(math.hypot(*yaw), 1.0, rel_tol=1e-5)
    np.testing.assert_allclose([state[f"bin.{a}"] for a in "xyz"], task.bin_pos(), atol=1e-6)


def test_grip_state_appends_where_the_fingers_are() -> None:
    """grip_state=True: the scene state ends with the grip site's position, which follows the
    arm; the task's part and the feature spec keep their layout."""
    plain = SimEnv("pick_place", render=False)
    gripped = SimEnv("pick_place", render=False, grip_state=True)
    first = gripped.reset(seed=3)[ENV_STATE]
    np.testing.assert_array_equal(first[: -len(GRIP_NAMES)], plain.reset(seed=3)[ENV_STATE])
    names = [*plain.task.environment_names(), *GRIP_NAMES]
    assert gripped.feature_spec()[ENV_STATE]["names"] == names
    assert first.shape == (len(names),) and first.dtype == np.float32
    site = gripped.model.site("grip").id
    np.testing.assert_allclose(first[-3:], gripped.data.site_xpos[site], atol=1e-6)
    action = gripped.observe()["observation.state"].copy()
    action[1] += 20.0  # shoulder lift, degrees: the grip site moves
    for _ in range(15):
        moved = gripped.step(action)[ENV_STATE]
    assert np.linalg.norm(moved[-3:] - first[-3:]) > 0.02
    np.testing.assert_allclose(moved[-3:], gripped.data.site_xpos[site], atol=1e-6)
    with pytest.raises(ValueError, match="grip_state"):
        SimEnv("reach", render=False, grip_state="yes")


def test_grip_positions_replay_the_grip_site_from_logged_joint_states(envs):
    """SimEnv.grip_positions (forward kinematics of follower-unit states) puts the grip site
    where the simulation had it when those states were observed."""
    env = envs["reach"]
    env.reset(seed=3)
    demonstrator = make_demonstrator(env, np.random.default_rng(3), 0.0)
    states, sites = [], []
    for _ in range(20):
        obs = env.observe()
        states.append(obs["observation.state"])
        sites.append(env.data.site_xpos[env.robot.grip_site].copy())
        env.step(demonstrator.act()[0])
    replayed = env.grip_positions(np.array(states))
    assert replayed.shape == (20, 3)
    # MuJoCo left site_xpos as of the last substep's start: a fraction of a millimetre apart
    np.testing.assert_allclose(replayed, np.array(sites), atol=5e-4)
    assert np.linalg.norm(replayed[-1] - replayed[0]) > 0.01  # the arm moved: not a constant
