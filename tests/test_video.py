"""Episode videos: the run command writes the first episodes' cameras with the instruction."""

import pytest


def test_run_writes_a_video_of_the_first_episode(tmp_path):
    pytest.importorskip("mujoco")
    av = pytest.importorskip("av")
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach", "executor=naive", "executor.execution_horizon=4", "episodes=2",
        "max_ticks=12", "synthetic.chunk_length=12", "synthetic.num_steps=2",
        "video_episodes=1", f"output_dir={tmp_path}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        figures = main(compose(config_name="run", overrides=overrides))
    assert len(figures["videos"]) == 1 and figures["videos"][0].endswith(("000.mp4", "000.gif"))
    if figures["videos"][0].endswith(".mp4"):
        with av.open(figures["videos"][0]) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 12
        assert frames[0].shape[1] == 2 * frames[0].shape[0]  # two square cameras side by side


def test_no_video_without_cameras(tmp_path):
    pytest.importorskip("mujoco")
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach", "executor=naive", "executor.execution_horizon=4", "episodes=1",
        "max_ticks=5", "synthetic.chunk_length=12", "synthetic.num_steps=2",
        "video_episodes=1", "driver.render=false", f"output_dir={tmp_path}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        figures = main(compose(config_name="run", overrides=overrides))
    assert figures["videos"] == []


def run_reach(tmp_path, *extra: str) -> dict:
    """``rtvla run`` on reach with the synthetic policy, 6 ticks per episode, videos on."""
    pytest.importorskip("mujoco")
    pytest.importorskip("av")
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach", "executor=naive", "executor.execution_horizon=4", "max_ticks=6",
        "synthetic.chunk_length=12", "synthetic.num_steps=2", "video=true",
        f"output_dir={tmp_path}", *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return main(compose(config_name="run", overrides=overrides))


def test_video_true_writes_every_episode(tmp_path):
    figures = run_reach(tmp_path, "episodes=2")
    assert [v[-7:-4] for v in figures["videos"]] == ["000", "001"]


def test_a_run_with_injected_failures_still_writes_its_video(tmp_path):
    figures = run_reach(tmp_path, "episodes=1", "failure_prob=1", "disturbance.window=[0.0,0.0]")
    assert figures["failure_kinds"] == ["push"] and len(figures["videos"]) == 1
