"""Executors on hand-made chunks: request timing, switch index, prev_actions, ensembling, d."""

import logging

import numpy as np
import pytest

from runtime.robot.executors import (
    EXECUTORS,
    ChunkSwitchExecutor,
    DelayEstimator,
    SyncExecutor,
    TemporalEnsembleExecutor,
    choose_execution_horizon,
    make_executor,
)

H = 8


def ramp(obs_tick: int, offset: float = 0.0, A: int = 2) -> np.ndarray:
    """A chunk (H, A) whose action i is obs_tick + i (+ offset): it names its own tick."""
    return np.repeat(np.arange(obs_tick, obs_tick + H, dtype=np.float32)[:, None] + offset, A, 1)


def test_delay_estimate_is_the_max_of_the_last_ten_measurements():
    est = DelayEstimator(initial=3)
    assert est.estimate == 3  # the guess before any measurement
    est.record(1)
    assert est.estimate == 1  # measurements replace the guess
    for delay in [9, 8, 2, 2, 2, 2, 2, 2, 2, 2, 2]:
        est.record(delay)
    assert est.estimate == 8  # 1 and 9 fell out of the window of 10
    est.record(2)
    assert est.estimate == 2


def test_execution_horizon_rule():
    assert choose_execution_horizon(2, 3, H) == 3  # s = max(d, s_min)
    assert choose_execution_horizon(4, 3, H) == 4  # d <= s = 4 <= H - d = 4
    with pytest.raises(ValueError, match=r"d <= s = max\(d, s_min\) <= H - d, so d <= 4"):
        choose_execution_horizon(5, 3, H)
    with pytest.raises(ValueError, match="no valid execution horizon"):
        make_executor("rtc", H, execution_horizon=6, initial_delay=3)  # 6 > H - 3
    with pytest.raises(ValueError, match="unknown executor 'rtx'"):
        make_executor("rtx", H)
    with pytest.raises(ValueError, match="bad settings for executor 'ensemble'"):
        make_executor("ensemble", H, execution_horizon=3)


@pytest.mark.parametrize("name", EXECUTORS)
def test_every_executor_is_built_by_name(name):
    params = {} if name == "ensemble" else {"execution_horizon": 3}
    executor = make_executor(name, H, initial_delay=1, **params)
    assert executor.name == name
    assert executor.blocking == (name == "sync")
    assert executor.action(0) is None  # nothing planned before a chunk
    assert executor.wants_request(0)


def test_sync_executes_the_first_s_actions_from_arrival_then_requests():
    ex = SyncExecutor(H, execution_horizon=3)
    ex.on_chunk(ramp(0), obs_tick=0, arrival_tick=2)
    assert ex.action(1) is None
    planned = [ex.action(t) for t in range(2, 6)]
    assert [p.index for p in planned[:3]] == [0, 1, 2]  # from index 0: the robot held still
    assert [float(p.action[0]) for p in planned[:3]] == [0, 1, 2]
    assert planned[3] is None  # s actions done: hold until the next chunk
    assert not ex.wants_request(4) and ex.wants_request(5)
    assert ex.delay == 2  # first consumed at tick 2, observed at tick 0
    fields = ex.request_fields(5)
    assert (fields.prev_actions, fields.delay, fields.execution_horizon) == (None, 2, 3)


def test_naive_switches_at_the_arrival_index_and_measures_the_delay():
    ex = ChunkSwitchExecutor("naive", H, execution_horizon=3, initial_delay=1)
    ex.on_chunk(ramp(0, offset=0.5), obs_tick=0, arrival_tick=2)
    assert ex.action(2).index == 2  # the first d = 2 actions were due while inferring
    assert ex.delay == 2
    assert not ex.wants_request(2) and ex.wants_request(3)  # s = max(d, s_min) = 3
    assert ex.request_fields(3).prev_actions is None  # naive sends none
    assert [ex.action(t).chunk for t in (3, 4)] == [0, 0]  # old chunk while inferring
    ex.on_chunk(ramp(3, offset=-0.5), obs_tick=3, arrival_tick=6)
    new = ex.action(6)
    assert (new.chunk, new.index, float(new.action[0])) == (1, 3, 5.5)  # index 6 - 3
    assert ex.delay == 3  # max(2, 3)
    assert ex.action(3 + H) is None  # past the chunk's end: hold


@pytest.mark.parametrize("name", ["rtc", "rtc_hard", "rtc_trained"])
def test_rtc_requests_carry_the_unexecuted_actions_aligned_to_the_observation_tick(name):
    ex = ChunkSwitchExecutor(name, H, execution_horizon=3, initial_delay=2)
    first = ex.request_fields(0)
    assert (first.prev_actions, first.delay, first.execution_horizon) == (None, 2, 3)
    chunk = ramp(0)
    ex.on_chunk(chunk, obs_tick=0, arrival_tick=2)
    for t in range(2, 5):
        ex.action(t)
    assert ex.wants_request(3)
    fields = ex.request_fields(4)  # a late request: s = 4 actions of the chunk were due
    assert fields.execution_horizon == 4
    assert fields.delay == 2
    np.testing.assert_array_equal(fields.prev_actions, chunk[4:])  # n = H - s = 4 rows
    assert fields.prev_actions[0, 0] == 4  # row 0 is the action for the observation tick
    fields.prev_actions[:] = -1
    assert ex.action(5).action[0] == 5  # the request holds a copy


def test_rtc_clamps_the_delay_when_the_chunk_cannot_cover_it(caplog):
    ex = ChunkSwitchExecutor("rtc", H, execution_horizon=3, initial_delay=1)
    ex.on_chunk(ramp(0), obs_tick=0, arrival_tick=7)
    with caplog.at_level(logging.WARNING):
        ex.action(7)  # measured d = 7, more than H - s_min = 5 and H // 2 = 4
        assert ex.delay == 4
    assert "using d=4" in caplog.text
    fields = ex.request_fields(7)  # one action left: d can be at most 1
    assert (fields.delay, fields.execution_horizon, len(fields.prev_actions)) == (1, 7, 1)
    late = ex.request_fields(H)  # nothing left at all
    assert (late.prev_actions, late.delay, late.execution_horizon) == (None, 4, 4)


def test_ensemble_averages_all_chunks_covering_the_tick_oldest_weighted_most():
    m = 0.5
    ex = TemporalEnsembleExecutor(H, coeff=m)
    ex.on_chunk(ramp(0), obs_tick=0, arrival_tick=1)
    ex.on_chunk(ramp(2, offset=10.0), obs_tick=2, arrival_tick=3)
    planned = ex.action(3)
    w = np.exp(-m * np.arange(2))  # oldest chunk first
    expected = (w[0] * 3.0 + w[1] * 13.0) / w.sum()  # both chunks' action for tick 3
    np.testing.assert_allclose(planned.action, [expected, expected], rtol=1e-6)
    assert (planned.chunk, planned.index) == (1, 1)  # reported: the newest chunk
    assert ex.action(H).action[0] == H + 10  # the first chunk ended: only the second left
    assert ex.action(H + 2) is None
    assert ex.wants_request(H + 2)
    ex.reset()
    assert ex.action(3) is None


def test_bid_sends_the_previous_chunk_and_names_its_sample_count():
    ex = make_executor("bid", H, execution_horizon=3, initial_delay=2, samples=8)
    assert (ex.name, ex.sampling, ex.blocking) == ("bid", "bid:8", False)
    assert make_executor("bid", 32).sampling == EXECUTORS["bid"]
    chunk = ramp(0)
    ex.on_chunk(chunk, obs_tick=0, arrival_tick=2)
    for t in range(2, 4):
        ex.action(t)
    np.testing.assert_array_equal(ex.request_fields(3).prev_actions, chunk[3:])
    with pytest.raises(ValueError, match="samples"):
        make_executor("bid", H, samples=0)
