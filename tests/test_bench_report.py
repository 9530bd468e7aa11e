"""bench/report.py renders docs/results.md from small fake bench outputs, sweep or no sweep."""

import importlib.util
import json
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"

FAKE = {
    "transport": {
        "bench": "transport", "round_trips": 200, "request_bytes": 55714, "reply_bytes": 1334,
        "server_p50_ms": 0.31, "server_p99_ms": 0.9, "raw_p50_ms": 0.12, "raw_p99_ms": 0.4,
        "ratio_p50": 2.58, "request_encode_decode_p50_ms": 0.05, "batch_window_ms": 0,
    },
    "throughput": {
        "bench": "throughput", "model": "vla", "model_id": "vla-random-init",
        "chunk_shape": [50, 6], "num_steps": 10, "torch_threads": 1, "max_batch": 8,
        "batch_window_ms": 2.0, "seconds_per_count": 2.0, "requests_per_robot": None,
        "robots": [
            {"robots": 1, "chunks_per_s": 19.3, "latency_p50_ms": 51.1, "latency_p99_ms": 83.5,
             "mean_batch_size": 1.0, "throughput_ratio": 1.0},
            {"robots": 8, "chunks_per_s": 34.9, "latency_p50_ms": 216.8, "latency_p99_ms": 403.6,
             "mean_batch_size": 6.59, "throughput_ratio": 1.81},
        ],
    },
    "jitter": {"bench": "tick_jitter", "seconds_per_loop": 1.0, "surprise": [1, 2]},
    "kill_record": {
        "task": "reach", "episodes": 3, "at_most_one_episode_lost_per_kill": True,
        "trials": [
            {"moment": "mid_first_episode", "episodes_kept_after_kill": 0,
             "dataset_complete_after_kill": False, "rerun_exit": 0, "rerun_recorded": 3,
             "final_episodes": 3},
            {"moment": "between_episodes", "episodes_kept_after_kill": 2,
             "dataset_complete_after_kill": False, "rerun_exit": 0, "rerun_recorded": 1,
             "final_episodes": 3},
        ],
    },
    "hostile_remote": {
        "hostile_messages": 2000, "hostile_kinds": ["random", "pickle"], "senders": 4,
        "blocks": 5, "flood_nice": 0, "flood_cpus": [1], "server_robot_cpus": [0],
        "torch_threads": 1, "flood_s": 1.5, "hostile_replies_read": 1000,
        "max_message_bytes": 1048576, "robot_hz": 30.0,
        "quiet": {"requests": 100, "answered": 100, "p50_ms": 6.2, "p99_ms": 7.7},
        "flood": {"requests": 45, "answered": 45, "p50_ms": 5.5, "p99_ms": 10.5},
        "answered_during_flood": 1.0, "p99_ratio": 1.37, "repeats": 3,
        "p99_ratio_ci95": [1.21, 1.55], "p99_ratio_per_repeat": [1.3, 1.4, 1.41],
        "server_rss_mb": {"before": 560.0, "peak": 566.6, "after": 565.4},
    },
}  # fmt: skip

SWEEP = {  # the shape rtvla sweep writes
    "task": "reach",
    "episodes": 10,
    "success_vs_delay": {
        "sync": {"0": {"success": 0.9, "ci95": [0.6, 0.98], "episodes": 10}},
        "rtc": {"0": {"success": 0.8, "ci95": [0.5, 0.95], "episodes": 10},
                "4": {"success": 0.7, "ci95": [0.4, 0.89], "episodes": 10}},
    },
    "success_vs_horizon": {"delay": 4, "horizons": {"rtc": {"10": {"success": 0.6}}}},
    "seams": {"delay": 4, "executors": {"rtc": {"seam_ratio": 1.1, "mean_jerk": 0.02},
                                        "naive": {"seam_ratio": 3.4}}},
    "skipped": [{"executor": "rtc_trained", "delay": 4, "reason": "not trained with RTC"}],
    "config": {"episodes": 10},
}  # fmt: skip


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_results(root: Path) -> Path:
    results = root / "report"
    results.mkdir()
    for name, data in FAKE.items():
        (results / f"{name}.json").write_text(json.dumps(data) + "\n")
    (results / "commands.tsv").write_text(
        "transport\tuv run python bench/transport.py --round-trips 200\n"
    )
    (results / "load.tsv").write_text("start\t1.5 1.2 0.9\nend\t2.0 1.4 1.0\n")
    (results / "skipped.tsv").write_text(
        "sim_speed\tfailed with exit status 1\nsweep\tno checkpoint at checkpoints/demo\n"
    )
    return results


def test_renders_without_a_sweep(report, tmp_path):
    results = write_results(tmp_path)
    output = tmp_path / "docs" / "results.md"
    report.main(["--results", str(results), "--output", str(output), "--quick"])
    page = output.read_text()
    assert page.startswith("# Results")
    assert "quick" in page and "| CPU |" in page and "| python |" in page
    assert "| load average (1, 5, 15 min) | start: 1.5 1.2 0.9; end: 2.0 1.4 1.0 |" in page
    assert "uv run python bench/transport.py --round-trips 200" in page
    assert "| PolicyServer (decode, validate, encode, ZMQ) | 0.31 | 0.9 |" in page
    assert "| 8 | 34.9 | 217 | 404 | 6.59 | 1.81 |" in page
    assert "Not run: failed with exit status 1." in page  # sim_speed
    assert "Not run: no result." in page  # policy_speed: no JSON, no reason
    assert "surprise" in page  # an unknown shape is shown as recorded
    assert "on CPU(s) [1] of its own (the server and robot on [0]" in page  # hostile_remote
    assert "run 3 times and the round trips pooled (each repeat's ratio: 1.3, 1.4, 1.41)" in page
    assert "**1.37** (bootstrap 95 % interval 1.21-1.55)" in page
    assert "| as episode 2 reached the disk | 2 | no | 0 | 1 | 3 |" in page  # kill_record
    assert "p99 flood / quiet: **1.37**" in page
    assert "Not run: no checkpoint at checkpoints/demo." in page
    assert not (tmp_path / "docs" / "figures").exists()


def test_renders_a_sweep_and_copies_its_figures(report, tmp_path):
    from PIL import Image

    results = write_results(tmp_path)
    sweep = results / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps(SWEEP))
    Image.new("RGB", (1600, 800), "white").save(sweep / "seams.png")
    output = tmp_path / "docs" / "results.md"
    report.main(["--results", str(results), "--output", str(output)])
    page = output.read_text()
    assert "task: `reach`, episodes: `10`" in page
    assert "| executor \\ delay d (ticks) | 0 | 4 |" in page
    assert "| rtc | 0.8 [0.5, 0.95] (n=10) | 0.7 [0.4, 0.89] (n=10) |" in page
    assert "| sync | 0.9 [0.6, 0.98] (n=10) | - |" in page
    assert "| executor \\ horizon s (ticks) | 10 |" in page and "| rtc | 0.6 |" in page
    assert "| executor | seam_ratio | mean_jerk |" in page and "| naive | 3.4 | - |" in page
    assert "- rtc_trained (delay 4): not trained with RTC" in page
    assert "![seams](figures/seams.png)" in page
    assert "success_vs_delay.png" not in page
    with Image.open(tmp_path / "docs" / "figures" / "seams.png") as image:
        assert image.size == (report.MAX_FIGURE_WIDTH, report.MAX_FIGURE_WIDTH // 2)


def test_a_sweep_of_unknown_shape_is_shown_as_recorded(report, tmp_path):
    results = write_results(tmp_path)
    (results / "sweep").mkdir()
    (results / "sweep" / "sweep.json").write_text(json.dumps({"rows": [1, 2]}))
    page = report.render(results, [], {"CPU": "x"}, {"python": "3.12"}, quick=False, date="today")
    assert '"rows"' in page and "a full run" in page
