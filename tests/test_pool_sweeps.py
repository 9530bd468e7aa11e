"""bench/pool_sweeps.py sums sweeps run on different seeds and refuses counting a seed twice."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "pool_sweeps.py"


def _load():
    spec = importlib.util.spec_from_file_location("pool_sweeps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(seed: int, cells: dict) -> dict:
    """The fields of a sweep.json that pooling reads: executor -> delay -> (successes, n)."""
    return {
        "task": "conveyor",
        "server": "local:outputs/train/x",
        "config": {"seed": seed},
        "success_vs_delay": {
            name: {d: {"successes": k, "episodes": n} for d, (k, n) in row.items()}
            for name, row in cells.items()
        },
    }


def test_pools_counts_and_recomputes_the_interval(tmp_path):
    pool_sweeps = _load()
    a = _sweep(1000, {"rtc": {"0": (13, 20), "8": (14, 20)}, "naive": {"8": (8, 20)}})
    b = _sweep(1020, {"rtc": {"8": (22, 30)}, "naive": {"8": (15, 30)}})
    table = pool_sweeps.pool([a, b])
    assert table["rtc"]["8"]["successes"] == 36 and table["rtc"]["8"]["episodes"] == 50
    assert table["rtc"]["0"]["episodes"] == 20  # a point only one sweep ran stays as it was
    assert table["naive"]["8"]["success"] == pytest.approx(23 / 50)
    lo, hi = table["naive"]["8"]["ci95"]
    assert 0.32 < lo < 0.34 and 0.59 < hi < 0.61  # Wilson, 23 of 50
    for folder, sweep in (("a", a), ("b", b)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sweep.json").write_text(json.dumps(sweep))
    assert pool_sweeps.pool(
        [pool_sweeps.read(str(tmp_path / "a")), pool_sweeps.read(str(tmp_path / "b"))]
    )


def test_folder_with_executors_keeps_only_those(tmp_path):
    pool_sweeps = _load()
    partial = _sweep(1000, {"naive": {"0": (30, 50)}, "rtc_hard": {"0": (10, 25)}})
    whole = _sweep(1000, {"rtc_hard": {"0": (20, 50)}})
    for folder, sweep in (("partial", partial), ("whole", whole)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sweep.json").write_text(json.dumps(sweep))
    with pytest.raises(SystemExit, match="in two sweeps"):  # rtc_hard's seeds 1000-1024 twice
        pool_sweeps.pool([pool_sweeps.read(str(tmp_path / n)) for n in ("partial", "whole")])
    table = pool_sweeps.pool([
        pool_sweeps.read(f"{tmp_path / 'partial'}:naive"), pool_sweeps.read(str(tmp_path / "whole"))
    ])  # fmt: skip
    assert table["rtc_hard"]["0"]["episodes"] == 50 and table["naive"]["0"]["successes"] == 30
    with pytest.raises(SystemExit, match="did not run"):
        pool_sweeps.read(f"{tmp_path / 'whole'}:bid")


def test_refuses_overlapping_seeds_and_other_policies():
    pool_sweeps = _load()
    a = _sweep(1000, {"rtc": {"8": (14, 20)}})
    with pytest.raises(SystemExit, match="in two sweeps"):
        pool_sweeps.pool([a, _sweep(1010, {"rtc": {"8": (5, 20)}})])
    other = _sweep(1020, {"rtc": {"8": (5, 20)}}) | {"server": "local:outputs/train/y"}
    with pytest.raises(SystemExit, match="differ in server"):
        pool_sweeps.pool([a, other])
    x, y = (
        _sweep(seed, {"rtc_trained": {"8": (5, 20)}})
        | {"config": {"seed": seed, "rtc_trained_checkpoint": c}}
        for seed, c in ((1000, "outputs/train/k8"), (1020, "outputs/train/k8_zero50"))
    )
    with pytest.raises(SystemExit, match="rtc_trained rows come from different policies"):
        pool_sweeps.pool([x, y])


def test_markdown_rows_give_success_interval_and_episodes():
    pool_sweeps = _load()
    table = pool_sweeps.pool([_sweep(1000, {"rtc": {"8": (72, 100)}, "naive": {"0": (5, 10)}})])
    text = pool_sweeps.success_markdown(table)
    assert "| rtc | - | 72 % (63-80 %, 100) |" in text  # no d = 0 point for rtc
    assert text.splitlines()[0] == "| executor | d = 0 | d = 8 |"


def test_seam_figures_come_from_the_first_sweep_that_has_them():
    pool_sweeps = _load()
    a = _sweep(1000, {"naive": {"4": (5, 10)}}) | {
        "seams": {"delay": 4, "executors": {"naive": {"seam_ratio": 7.7, "mean_jerk": 9.0}}}
    }
    b = _sweep(1000, {"rtc": {"4": (6, 10)}}) | {
        "seams": {"delay": 4, "executors": {"rtc": {"seam_ratio": 5.3, "mean_jerk": 2.0}}}
    }
    seams = pool_sweeps.seam_figures([a, b], ["rtc", "naive"])
    assert seams["delay"] == 4 and list(seams["executors"]) == ["rtc", "naive"]
    assert seams["executors"]["naive"]["seam_ratio"] == 7.7
    b["seams"]["delay"] = 8  # another delay: not mixed in, listed as ignored
    seams = pool_sweeps.seam_figures([a, b], ["rtc", "naive"])
    assert list(seams["executors"]) == ["naive"] and seams["ignored"] == [
        {"seed": 1000, "delay": 8}
    ]
