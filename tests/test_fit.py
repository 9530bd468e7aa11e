"""Before the first tick: a policy's features, actions and rate against the driver's, and a
run none of whose requests was answered ending in failure."""

import pytest

from runtime.wire.info import PolicyInfo, fit_problems
from runtime.wire.keys import ENV_STATE, STATE

FRONT = "observation.images.front"
DRIVER = {
    STATE: {"dtype": "float32", "shape": (6,), "names": list("abcdef")},
    FRONT: {"dtype": "image", "shape": (64, 64, 3), "names": ["height", "width", "channels"]},
    "action": {"dtype": "float32", "shape": (6,), "names": list("abcdef")},
}
POLICY = {
    STATE: {"dtype": "float32", "shape": (6,)},
    FRONT: {"dtype": "uint8", "shape": (64, 64, 3)},
}


def test_a_fitting_policy_has_no_problems():
    assert fit_problems(POLICY, 30.0, 6, DRIVER, 30.0) == []


def test_a_history_feature_fits_the_driver_feature_it_stacks():
    history = {STATE + ".history": {"dtype": "float32", "shape": (2, 6)}}
    assert fit_problems(POLICY | history, 30.0, 6, DRIVER, 30.0) == []
    wrong = {STATE + ".history": {"dtype": "float32", "shape": (2, 7)}}
    (problem,) = fit_problems(POLICY | wrong, 30.0, 6, DRIVER, 30.0)
    assert "observation.state is (6,)" in problem


@pytest.mark.parametrize(
    ("features", "fps", "action_dim", "expected"),
    [
        (POLICY | {"observation.images.wrist": {"dtype": "uint8", "shape": (64, 64, 3)}}, 30.0, 6,
         "observation.images.wrist (64, 64, 3) uint8, which the driver does not provide"),
        (POLICY | {FRONT: {"dtype": "uint8", "shape": (96, 96, 3)}}, 30.0, 6,
         "set task.image_size=96"),
        (POLICY | {STATE: {"dtype": "float32", "shape": (7,)}}, 30.0, 6,
         "observation.state is (6,)"),
        (POLICY, 30.0, 7, "predicts 7 actions"),
        (POLICY, 50.0, 6, "trained at 50 fps, the control loop runs at 30 Hz: set hz=50"),
    ],
)  # fmt: skip
def test_each_mismatch_says_what_to_change(features, fps, action_dim, expected):
    (problem,) = fit_problems(features, fps, action_dim, DRIVER, 30.0)
    assert expected in problem


@pytest.mark.parametrize(
    ("policy_dim", "driver_dim", "expected"),
    [(24, 21, "set task.grip_state=true"), (21, 24, "set task.grip_state=false"),
     (22, 21, "configure the driver to match")],
)  # fmt: skip
def test_a_scene_state_that_differs_by_the_grip_site_names_the_setting(
    policy_dim, driver_dim, expected
):
    driver = DRIVER | {ENV_STATE: {"dtype": "float32", "shape": (driver_dim,)}}
    policy = POLICY | {ENV_STATE: {"dtype": "float32", "shape": (policy_dim,)}}
    (problem,) = fit_problems(policy, 30.0, 6, driver, 30.0)
    assert expected in problem


class BrokenPolicy:
    """Fits a reach driver without cameras, and fails every request."""

    info = PolicyInfo("broken", 12, 6, 30.0, {STATE: {"dtype": "float32", "shape": (6,)}})

    def infer(self, requests):
        raise RuntimeError("the actuator model blew up")


def run_config(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR

    common = ["task=reach", "driver.render=false", "episodes=1", "max_ticks=12",
              "executor=sync", "inference_delay_ticks=1", f"output_dir={tmp_path}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="run", overrides=[*common, *overrides])


def test_a_run_whose_requests_all_failed_fails(tmp_path):
    pytest.importorskip("mujoco")
    from runtime.commands import CommandFailed
    from runtime.commands.run import main
    from runtime.serving.server import PolicyServer

    with PolicyServer(BrokenPolicy(), "tcp://127.0.0.1:*", log_every_s=None) as server:
        server.start_in_thread()
        cfg = run_config(tmp_path, f"server={server.address}")
        with pytest.raises(CommandFailed, match=r"none of the \d+ requests was answered") as info:
            main(cfg)
    assert info.value.figures["request_errors"] >= 1
    assert (tmp_path / "summary.json").exists() and (tmp_path / "episode_000.npz").exists()


def test_a_policy_at_another_rate_is_refused_before_the_first_tick(tmp_path):
    pytest.importorskip("mujoco")
    from runtime.commands.run import main
    from runtime.serving.server import PolicyServer

    with PolicyServer(BrokenPolicy(), "tcp://127.0.0.1:*", log_every_s=None) as server:
        server.start_in_thread()
        with pytest.raises(ValueError, match="set hz=30"):
            main(run_config(tmp_path, f"server={server.address}", "hz=20"))
        assert server.requests_served == 0 and server.errors == 0
    assert not list(tmp_path.glob("episode_*.npz"))
