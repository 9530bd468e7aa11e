"""SafeDriver clamps, holds and e-stops; Watchdog says when to hold and logs each stall once."""

import logging

import numpy as np
import pytest

from runtime.robot.drivers.base import ActionLimits, Driver
from runtime.robot.safety import SafeDriver, Watchdog
from runtime.robot.testing import JumpDriver
from runtime.wire.keys import STATE

NAMES = ("a", "b", "gripper")
LIMITS = ActionLimits(low=[-1, -1, 0], high=[1, 1, 0.5], max_delta=[0.1, 0.1, 0.2], names=NAMES)


class RecordingDriver(JumpDriver):
    """A JumpDriver whose state also holds a non-joint reading, a temperature of 7.0."""

    def __init__(self, start=(0.0, 0.0, 0.0)) -> None:
        super().__init__(NAMES, start=start, limits=LIMITS)

    def observe(self) -> dict[str, np.ndarray]:
        return {STATE: np.r_[self.position, 7.0].astype(np.float32)}

    def feature_spec(self) -> dict[str, dict]:
        return {
            STATE: {"dtype": "float32", "shape": (4,), "names": [*NAMES, "temperature"]},
            "action": {"dtype": "float32", "shape": (3,), "names": list(NAMES)},
        }


def test_safe_driver_is_a_driver_and_a_context_manager():
    inner = RecordingDriver()
    with SafeDriver(inner) as safe:
        assert isinstance(safe, Driver)
        assert inner.connected
        assert safe.limits() is LIMITS
        assert safe.feature_spec() == inner.feature_spec()
    assert not inner.connected


def test_clamps_to_bounds_and_rate_from_observed_start():
    inner = RecordingDriver(start=(0.95, -0.5, 0.0))
    safe = SafeDriver(inner)
    safe.act(np.array([5.0, -0.55, 0.1]))  # first action: measured from the observed state
    np.testing.assert_allclose(inner.commands[-1], [1.0, -0.55, 0.1], atol=1e-6)
    safe.act(np.array([-1.0, 1.0, 0.5]))  # then from the last command
    np.testing.assert_allclose(inner.commands[-1], [0.9, -0.45, 0.3], atol=1e-6)
    assert safe.clamped == 2
    safe.act(np.array([0.85, -0.4, 0.3]))  # within limits: passed through untouched
    np.testing.assert_allclose(inner.commands[-1], [0.85, -0.4, 0.3], atol=1e-6)
    assert safe.clamped == 2


def test_start_outside_bounds_is_walked_back_at_max_delta():
    safe = SafeDriver(inner := RecordingDriver(start=(1.5, 0.0, 0.0)))
    safe.act(np.zeros(3))
    np.testing.assert_allclose(inner.commands[-1], [1.4, 0.0, 0.0], atol=1e-6)


def test_clamp_warnings_are_rate_limited(caplog):
    safe = SafeDriver(RecordingDriver(), log_every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="runtime.robot.safety"):
        for _ in range(5):
            safe.act(np.array([1.0, 0.0, 0.0]))
    assert safe.clamped == 5
    assert len([r for r in caplog.records if "clamped" in r.getMessage()]) == 1


def test_non_finite_action_is_replaced_by_hold(caplog):
    safe = SafeDriver(inner := RecordingDriver(start=(0.2, 0.3, 0.1)))
    with caplog.at_level(logging.WARNING, logger="runtime.robot.safety"):
        safe.act(np.array([np.nan, 0.0, 0.0]))
        safe.act(np.array([0.25, np.inf, 0.1]))
    np.testing.assert_allclose(inner.commands, [[0.2, 0.3, 0.1]] * 2, atol=1e-6)
    assert "non-finite" in caplog.text
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        safe.act(np.zeros(2))


def test_estop_latches_until_released(caplog):
    safe = SafeDriver(inner := RecordingDriver())
    safe.act(np.array([0.05, 0.0, 0.0]))
    with caplog.at_level(logging.ERROR, logger="runtime.robot.safety"):
        safe.estop("operator pressed stop")
        safe.estop("again")
        for _ in range(3):
            safe.act(np.array([0.1, 0.1, 0.1]))
    assert safe.estopped
    np.testing.assert_allclose(inner.commands[1:], [[0.05, 0.0, 0.0]] * 3, atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == [
        "E-STOP (operator pressed stop): holding position until release_estop()"
    ]
    safe.release_estop()
    safe.act(np.array([1.0, 0.0, 0.0]))  # resumes rate-limited from the held position
    assert not safe.estopped
    np.testing.assert_allclose(inner.commands[-1], [0.15, 0.0, 0.0], atol=1e-6)


def test_hold_before_any_command_holds_the_observed_position():
    safe = SafeDriver(inner := RecordingDriver(start=(0.4, -0.2, 0.3)))
    safe.hold()
    np.testing.assert_allclose(inner.commands[-1], [0.4, -0.2, 0.3], atol=1e-6)


def test_resync_measures_the_next_action_from_the_observation_again():
    safe = SafeDriver(inner := RecordingDriver())
    safe.act(np.zeros(3))
    inner.position = np.array([0.8, 0.0, 0.0], dtype=np.float32)  # moved by something else
    safe.resync()
    safe.act(np.array([0.8, 0.0, 0.0]))
    np.testing.assert_allclose(inner.commands[-1], [0.8, 0.0, 0.0], atol=1e-6)


def test_limits_must_match_observed_action_joints():
    class Blind(RecordingDriver):
        def feature_spec(self) -> dict[str, dict]:
            spec = super().feature_spec()
            return {**spec, STATE: {"dtype": "float32", "shape": (1,), "names": ["temperature"]}}

    with pytest.raises(ValueError, match=r"\['a', 'b', 'gripper'\] are not among"):
        SafeDriver(Blind())
    other = ActionLimits(low=[-1, -1], high=[1, 1], max_delta=[0.1, 0.1], names=("a", "b"))
    with pytest.raises(ValueError, match="the limits are for the joints"):
        SafeDriver(RecordingDriver(), limits=other)


def test_watchdog_holds_after_timeout_and_logs_each_transition_once(caplog):
    dog = Watchdog(timeout=2)
    with caplog.at_level(logging.INFO, logger="runtime.robot.safety"):
        assert dog.should_hold(0, None)  # nothing received yet
        assert not dog.should_hold(1, 1)
        holds = [dog.should_hold(tick, last_fresh=1) for tick in range(2, 7)]
        assert holds == [False, False, True, True, True]
        assert not dog.should_hold(7, 7)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "holding position: no action received yet",
        "resumed: fresh actions again at tick 1",
        "holding position: no fresh action for 3 ticks",
        "resumed: fresh actions again at tick 7",
    ]
    assert dog.stalls == 2 and not dog.holding
    with pytest.raises(ValueError, match=">= 0"):
        Watchdog(timeout=-1)
