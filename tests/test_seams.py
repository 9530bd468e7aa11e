"""Seam smoothness metrics and the seam plot, on hand-built run logs with known seams."""

import numpy as np
import pytest

from runtime.analysis.seams import (
    jerks,
    plot_seam_metrics,
    plot_seams,
    seam_changes,
    seam_metrics,
)
from runtime.robot.runlog import RunLog

HOLD = -1


def make_log(actions, chunks, hz: float = 10.0) -> RunLog:
    """A run log with one row per tick; chunk HOLD (-1) marks a hold (its action is NaN)."""
    chunks = np.asarray(chunks)
    actions = np.asarray(actions, np.float32).reshape(len(chunks), -1)  # (T, A)
    planned = chunks != HOLD
    actions[~planned] = np.nan
    ticks = {
        "tick": np.arange(len(chunks)),
        "action": actions,
        "chunk": chunks,
        "index": np.where(planned, 0, -1),
        "planned": planned,
        "hold_reason": np.where(planned, "", "inferring"),
    }
    return RunLog(ticks=ticks, requests={}, hz=hz, missed_ticks=0)


def three_chunks() -> RunLog:
    """Joint 0 ramps by 0.125 a tick; chunk 1 starts 0.5 too high (a seam of 0.5), chunk 2
    continues joint 0 smoothly but moves joint 1 by -0.25 (a seam of 0.25)."""
    t = np.arange(15)
    j0 = 0.125 * t + np.where(t >= 5, 0.5, 0.0)
    j1 = np.where(t >= 10, -0.25, 0.0)
    return make_log(np.stack([j0, j1], axis=1), np.repeat([0, 1, 2], 5))


def test_seam_ratio_is_the_largest_seam_over_the_p99_within_chunk_change():
    m = seam_metrics(three_chunks())
    assert m["seams"] == 2
    assert m["seam_change_max"] == pytest.approx(0.5 + 0.125)  # the jump plus the ramp's step
    assert m["seam_change_mean"] == pytest.approx((0.625 + 0.25) / 2)  # max over joints
    assert m["within_p99"] == pytest.approx(0.125)
    assert m["seam_ratio"] == pytest.approx(5.0)
    changes, ticks, within = seam_changes(three_chunks())
    assert ticks.tolist() == [5, 10] and changes.shape == (2, 2) and within.shape == (12, 2)


def test_a_smooth_hand_over_has_a_ratio_of_one():
    t = np.arange(12)
    m = seam_metrics(make_log(0.125 * t, np.repeat([0, 1, 2], 4)))
    assert m["seams"] == 2 and m["seam_ratio"] == pytest.approx(1.0)


def test_jerk_is_the_third_difference_times_hz_cubed():
    hz = 10.0
    t = np.arange(8, dtype=float)
    m = seam_metrics(make_log(t**3, np.zeros(8, int), hz=hz))  # third difference of t^3: 6
    assert m["mean_jerk"] == pytest.approx(6 * hz**3)
    assert m["seams"] == 0 and m["seam_ratio"] is None and m["seam_change_max"] is None


def test_holds_break_jerk_runs_and_a_seam_spans_the_hold():
    hz = 30.0
    t = np.arange(12, dtype=float)
    actions = t**3
    actions[7:] += 100.0  # a jump across the hold: it must count as a seam, not as jerk
    chunks = [0, 0, 0, 0, 0, HOLD, HOLD, 1, 1, 1, 1, 1]
    log = make_log(actions, chunks, hz=hz)
    m = seam_metrics(log)
    assert np.isfinite(jerks(log)).all()
    assert m["mean_jerk"] == pytest.approx(6 * hz**3)  # runs 0-4 and 7-11 only
    assert m["seams"] == 1
    assert m["seam_change_max"] == pytest.approx(7**3 + 100 - 4**3)  # tick 4 -> tick 7
    # Runs too short for a third difference contribute nothing.
    short = make_log(actions, [0, 0, 0, HOLD, 0, 0, 0, HOLD, 1, 1, 1, HOLD])
    assert seam_metrics(short)["mean_jerk"] is None


def test_episodes_are_measured_apart():
    first = make_log(np.zeros(6), np.zeros(6, int))
    second = make_log(np.ones(6), np.ones(6, int))
    m = seam_metrics([first, second])
    assert m["seams"] == 0  # no seam between the last action of one episode and the next
    assert m["within_p99"] == 0.0 and m["mean_jerk"] == 0.0
    with pytest.raises(ValueError, match="at least one run log"):
        seam_metrics([])


def test_plot_writes_a_png_per_executor(tmp_path):
    ramp = 0.125 * np.arange(40)
    smooth = make_log(np.stack([ramp, -ramp], axis=1), np.repeat(np.arange(4), 10))
    no_seams = make_log(np.zeros((10, 2)), np.zeros(10, int))
    path = plot_seams(
        {"naive": three_chunks(), "rtc": [smooth], "sync": [no_seams]},
        tmp_path / "seams.png",
        joint_names=["shoulder_pan", "gripper"],
    )
    assert path == tmp_path / "seams.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_seam_metrics_plot_takes_an_executor_without_seams(tmp_path):
    no_seams = make_log(np.zeros((10, 2)), np.zeros(10, int))
    metrics = {"naive": seam_metrics(three_chunks()), "sync": seam_metrics([no_seams])}
    assert metrics["sync"]["seam_ratio"] is None  # drawn as an empty, labelled slot
    path = plot_seam_metrics(metrics, tmp_path / "seam_metrics.png", delay=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one executor"):
        plot_seam_metrics({}, tmp_path / "none.png", delay=4)
