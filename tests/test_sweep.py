"""``rtvla sweep``: a tiny sweep with the synthetic policy, rtc_trained and the policy's
training-time RTC, and the configurations it refuses."""

import json

import numpy as np
import pytest

from runtime.analysis.stats import wilson_interval

pytest.importorskip("mujoco")

SYNTHETIC = [
    "server=local:synthetic",
    "task=reach",
    "driver.render=false",
    "max_ticks=40",
    "synthetic.chunk_length=32",
    "synthetic.num_steps=5",
    "executor_params.naive.execution_horizon=8",
    "executor_params.rtc.execution_horizon=8",
]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="sweep", overrides=list(overrides))


def sweep(*overrides: str) -> dict:
    from runtime.commands.sweep import main

    return main(compose(*overrides))


def test_a_tiny_sweep_writes_its_table_seams_and_plots(tmp_path):
    figures = sweep(
        *SYNTHETIC,
        "executors=[naive,rtc]",
        "delays=[3,1]",
        "episodes=1",
        "horizon_delay=3",
        "horizons=[2,5,30]",  # with H = 32 at d = 3 only s = 5 satisfies d <= s <= H - d
        "seam_delay=3",
        f"output_dir={tmp_path}",
    )
    table = figures["success_vs_delay"]
    assert list(table) == ["naive", "rtc"] and all(
        list(row) == ["1", "3"] for row in table.values()
    )
    for row in table.values():
        for cell in row.values():
            assert set(cell) == {"success", "ci95", "episodes"} and cell["episodes"] == 1
            lo, hi = cell["ci95"]
            assert lo <= cell["success"] <= hi
            expected = wilson_interval(round(cell["success"]), 1)
            assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    assert figures["seam_ratio"]["rtc"] < 0.5 * figures["seam_ratio"]["naive"]

    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["success_vs_delay"]["rtc"]["3"]["delay_ticks_mean"] == 3.0  # the simulated d
    assert saved["success_vs_delay"]["rtc"]["3"]["chunk_ms_p50"] > 0  # measured inference time
    assert saved["success_vs_delay"]["naive"]["1"]["delay_ticks_mean"] == 1.0
    assert saved["chunk_length"] == {"naive": 32, "rtc": 32}
    horizons = saved["success_vs_horizon"]
    assert horizons["delay"] == 3
    assert {name: list(row) for name, row in horizons["horizons"].items()} == {
        "naive": ["5"],
        "rtc": ["5"],
    }
    skipped = {(s["executor"], s["horizon"]) for s in saved["skipped"]}
    assert skipped == {(e, s) for e in ("naive", "rtc") for s in (2, 30)}
    assert all("d <= s <= H - d" in s["reason"] for s in saved["skipped"])
    seams = saved["seams"]
    assert seams["delay"] == 3 and set(seams["executors"]) == {"naive", "rtc"}
    assert seams["executors"]["naive"]["seams"] >= 3
    assert saved["config"]["delays"] == [3, 1] and saved["machine"]["cpus"] >= 1
    assert saved["versions"]["numpy"] == np.__version__ and not saved["interrupted"]
    for name in ("success_vs_delay", "horizon", "seams"):
        path = tmp_path / f"{name}.png"
        assert figures["paths"][name] == str(path)
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_quick_runs_the_reduced_grid(tmp_path):
    figures = sweep(
        *SYNTHETIC,
        "executors=[naive]",
        "delays=[1,2,3]",
        "quick=true",
        "quick_grid.episodes=2",
        "quick_grid.delays=[2]",
        "quick_grid.horizons=[]",
        "seam_delay=2",
        f"output_dir={tmp_path}",
    )
    assert list(figures["success_vs_delay"]["naive"]) == ["2"]
    assert figures["success_vs_delay"]["naive"]["2"]["episodes"] == 2
    assert figures["paths"]["horizon"] is None and not (tmp_path / "horizon.png").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["executors=[naive,teleport]"], r"unknown \['teleport'\]"),
        (["executors=[]"], "executors is empty"),
        (["delays=[]"], "delays is empty"),
        (["delays=[-1]"], ">= 0"),
        (["delays=[17]"], r"delays: naive cannot run at d=17: no valid execution horizon"),
        (["executor_params.sync.execution_horizon=40", "executors=[sync]"], "sync execution_h"),
        (["server=tcp://127.0.0.1:5555"], "runs the policy in this process"),
        (["batch_episodes=0"], "batch_episodes=0: run at least one episode at a time"),
    ],
)
def test_bad_configurations_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        sweep(*SYNTHETIC, "executors=[naive]", *overrides, f"output_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


def test_a_sweep_needs_a_policy():
    with pytest.raises(ValueError, match="set checkpoint=DIR"):
        sweep("task=reach")


# ---- rtc_trained and training-time RTC ----------------------------------------------------------

IMAGE = 48  # small cameras keep the VLA runs fast


@pytest.fixture(scope="module")
def vla_runs(tmp_path_factory):
    """Untrained tiny VLA checkpoints: K -> run folder, trained (in name) with training-time RTC
    prefixes of up to K actions (K = 0: without)."""
    import torch

    from policies.checkpoint import save_checkpoint
    from policies.normalize import Normalizer
    from policies.vla import VLA, VLAConfig

    state = {"dtype": "float32", "shape": [6]}
    image = {"dtype": "image", "shape": [IMAGE, IMAGE, 3]}
    features = {
        "observation.state": state,
        "observation.images.front": image,
        "observation.images.wrist": image,
        "action": state,
    }
    stats = {k: np.zeros(6) for k in ("observation.state", "action")}
    runs = {}
    for K in (0, 2):
        torch.manual_seed(0)
        config = VLAConfig(
            image_size=(IMAGE, IMAGE), patch_size=24, chunk_length=8, width=32, depth=1,
            num_heads=2, expert_width=32, mlp_ratio=2.0, num_steps=2, fast_loss=False,
            insulation=False, rtc_training_max_delay=K,
        )  # fmt: skip
        model = VLA(config)
        runs[K] = tmp_path_factory.mktemp(f"vla_rtc{K}")
        save_checkpoint(
            runs[K], 1, model=model, ema=model.state_dict(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            normalizer=Normalizer(stats, {k: v + 1 for k, v in stats.items()}),
            fast_tokenizer=None, features=features, train_config={}, fps=30.0,
        )  # fmt: skip
    return runs


def vla_sweep(tmp_path, checkpoint, *overrides):
    return sweep(
        f"checkpoint={checkpoint}",
        "task=reach",
        f"task.image_size={IMAGE}",
        "max_ticks=8",
        "episodes=1",
        "horizons=[]",
        "executor_params.sync.execution_horizon=4",
        "executor_params.rtc_trained.execution_horizon=3",
        f"output_dir={tmp_path}",
        *overrides,
    )


def test_rtc_trained_is_skipped_for_a_policy_trained_without_it(tmp_path, vla_runs):
    figures = vla_sweep(
        tmp_path, vla_runs[0], "executors=[sync,rtc_trained]", "delays=[1]", "seam_delay=1"
    )
    assert list(figures["success_vs_delay"]) == ["sync"]
    (note,) = figures["skipped"]
    assert note.startswith("rtc_trained (all):") and "without training-time RTC" in note
    assert "rtc_trained_checkpoint" in note
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["skipped"][0]["executor"] == "rtc_trained"


def test_rtc_trained_runs_on_its_own_checkpoint_up_to_its_trained_delay(tmp_path, vla_runs):
    figures = vla_sweep(
        tmp_path,
        vla_runs[0],
        f"rtc_trained_checkpoint={vla_runs[2]}",
        "executors=[sync,rtc_trained]",
        "delays=[1,3]",
        "seam_delay=1",
    )
    table = figures["success_vs_delay"]
    assert list(table["sync"]) == ["1", "3"] and list(table["rtc_trained"]) == ["1"]
    (note,) = figures["skipped"]
    assert note.startswith("rtc_trained (d=3):") and "at most 2 actions" in note
    with pytest.raises(ValueError, match="trained without training-time RTC"):
        vla_sweep(tmp_path, vla_runs[0], f"rtc_trained_checkpoint={vla_runs[0]}", "delays=[1]")


def test_workers_give_the_outcomes_of_one_process(tmp_path):
    """jobs=2 shares the episode groups out between two worker processes: the same
    per-episode outcomes, ticks and seam figures as running them all here, and, with the
    analytic policy, as running the episodes one by one (batch_episodes=1)."""
    common = (*SYNTHETIC, "executors=[naive,rtc]", "delays=[0,3]", "episodes=3", "horizons=[]",
              "seam_delay=3")  # fmt: skip
    runs = {
        "one": ("jobs=1", "batch_episodes=2"),
        "two": ("jobs=2", "batch_episodes=2"),
        "alone": ("jobs=1", "batch_episodes=1"),
    }
    figures = {n: sweep(*common, *o, f"output_dir={tmp_path / n}") for n, o in runs.items()}
    saved = {n: json.loads((tmp_path / n / "sweep.json").read_text()) for n in runs}
    for name in ("naive", "rtc"):
        for d in ("0", "3"):
            a, b, c = (s["success_vs_delay"][name][d] for s in saved.values())
            assert a["episode_success"] == b["episode_success"] == c["episode_success"]
            assert a["episode_ticks"] == b["episode_ticks"] == c["episode_ticks"]
            assert len(a["episode_ticks"]) == 3
    assert figures["one"]["seam_ratio"] == pytest.approx(figures["two"]["seam_ratio"])
    assert len(list((tmp_path / "two" / "workers").glob("p*_e*.json"))) == 2 * 2 * 3


def test_episode_groups_are_even_and_cover_every_episode():
    from runtime.commands.sweep import _groups

    assert _groups(1, 50, 16) == [(0, list(range(a, b))) for a, b in
                                  [(0, 12), (12, 25), (25, 38), (38, 50)]]  # fmt: skip
    groups = _groups(3, 5, 2)
    assert [i for i, _ in groups] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(3):
        assert sorted(k for j, ks in groups if j == i for k in ks) == list(range(5))
    assert _groups(2, 3, 16) == [(0, [0, 1, 2]), (1, [0, 1, 2])]
    with pytest.raises(ValueError, match="batch_episodes=0"):
        _groups(1, 3, 0)


def test_a_quick_sweep_on_the_dynamic_task(tmp_path):
    overrides = [o for o in SYNTHETIC if o != "task=reach"]
    figures = sweep(
        *overrides, "task=track", "quick=true", "executors=[naive,rtc]",
        "quick_grid.delays=[0,4]", "quick_grid.episodes=1", "quick_grid.horizons=[]",
        f"output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["task"] == "track" and saved["quick"]
    for name in ("naive", "rtc"):
        for d in ("0", "4"):
            cell = saved["success_vs_delay"][name][d]
            assert cell["episodes"] == 1 and len(cell["ci95"]) == 2
            assert cell["episode_success"] == [int(cell["success"])]
    assert figures["success_vs_delay"]["rtc"]["4"]["episodes"] == 1


def test_num_steps_sets_the_synthetic_policys_euler_steps_too():
    from runtime.commands.run import make_client

    steps = {}
    for value in ("3", "null"):
        client = make_client(compose(*SYNTHETIC, f"num_steps={value}"), action_dim=6)
        steps[value] = client.policy.num_steps
        client.close()
    assert steps == {"3": 3, "null": 5}  # null: synthetic.num_steps (5 in SYNTHETIC)
