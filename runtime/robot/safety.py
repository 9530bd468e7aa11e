"""Safety at the robot boundary: a driver wrapper that only lets safe commands through.

``SafeDriver`` wraps any driver and is one. Every action is

1. replaced by *hold* (the last commanded position again) when it is not finite or the e-stop
   is latched;
2. clamped to the driver's ``[low, high]`` bounds and to at most ``max_delta`` away from the
   last commanded action (the first one from the observed position).

The rate limit always wins over the bounds: a robot that starts outside its bounds is walked
back in at ``max_delta`` per tick rather than jumped in.

``Watchdog`` tells the controller when no fresh action has come for too long, so that it
holds position instead of replaying stale ones. Everything here is numpy-only.
"""

from __future__ import annotations

import logging

import numpy as np

from runtime.logs import RateLimitedLog
from runtime.robot.drivers.base import ActionLimits, Driver, DriverContext, Observation
from runtime.wire.keys import ACTION, STATE

log = logging.getLogger(__name__)


class SafeDriver(DriverContext):
    """Clamps, rate-limits and e-stops the actions sent to ``driver``."""

    def __init__(
        self, driver: Driver, limits: ActionLimits | None = None, log_every_s: float = 5.0
    ) -> None:
        """``limits`` defaults to the driver's; clamping is logged at most every ``log_every_s``."""
        self.driver = driver
        self._limits = driver.limits() if limits is None else limits
        spec = driver.feature_spec()
        actions = tuple(spec.get(ACTION, {}).get("names") or ())
        if actions != self._limits.names:
            raise ValueError(
                f"the limits are for the joints {self._limits.names}, the driver's actions are "
                f"{actions}: give limits for the driver's action names, in their order"
            )
        self._position = _position_index(spec, self._limits.names)
        self.clamped = 0  # actions changed by clamping, since construction
        self._last: np.ndarray | None = None  # (A,) last commanded action
        self._observed: np.ndarray | None = None  # (A,) joint positions of the last observation
        self._estop_reason: str | None = None
        self._clamp_log = RateLimitedLog(log, log_every_s)
        self._nan_log = RateLimitedLog(log, log_every_s)

    def connect(self) -> None:
        self.driver.connect()

    def close(self) -> None:
        self.driver.close()
        self.resync()

    def feature_spec(self) -> dict[str, dict]:
        return self.driver.feature_spec()

    def limits(self) -> ActionLimits:
        return self._limits

    def observe(self) -> Observation:
        obs = self.driver.observe()
        self._observed = np.asarray(obs[STATE], dtype=np.float32)[self._position]
        return obs

    def act(self, action: np.ndarray) -> None:
        """Command ``action`` (A,) once made safe (see the module docstring)."""
        action = self._limits.check(action)
        if self._estop_reason is not None:
            self.hold()
        elif not np.all(np.isfinite(action)):
            self._nan_log.warning("non-finite action replaced by hold: %s", action.tolist())
            self.hold()
        else:
            self._command(self._clamp(action))

    def hold(self) -> None:
        """Command the last commanded position again (or, before any, the observed one)."""
        self._command(self._reference())

    def resync(self) -> None:
        """Forget the last command: the next action is rate-limited from the observed position.

        Call it after the robot was moved by something else (a simulator reset, a human).
        """
        self._last = self._observed = None

    def estop(self, reason: str) -> None:
        """Latch the e-stop: from the next tick on, every action is replaced by hold."""
        if self._estop_reason is None:
            self._estop_reason = reason
            log.error("E-STOP (%s): holding position until release_estop()", reason)

    def release_estop(self) -> None:
        """Unlatch the e-stop; actions resume, rate-limited from the held position."""
        if self._estop_reason is not None:
            log.warning("e-stop released (was: %s)", self._estop_reason)
            self._estop_reason = None

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    def _reference(self) -> np.ndarray:
        if self._last is not None:
            return self._last
        if self._observed is None:
            self.observe()
        return self._observed

    def _clamp(self, action: np.ndarray) -> np.ndarray:
        lim, ref = self._limits, self._reference()
        lo = np.minimum(np.maximum(lim.low, ref - lim.max_delta), ref + lim.max_delta)
        hi = np.maximum(np.minimum(lim.high, ref + lim.max_delta), ref - lim.max_delta)
        safe = np.clip(action, lo, hi)
        changed = np.abs(safe - action) > 1e-6
        if changed.any():
            self.clamped += 1
            self._clamp_log.warning(
                "action clamped to the limits: %s by up to %.3g",
                ", ".join(self._limits.names[i] for i in np.flatnonzero(changed)),
                float(np.max(np.abs(safe - action))),
            )
        return safe

    def _command(self, action: np.ndarray) -> None:
        self.driver.act(action)
        self._last = action


class Watchdog:
    """Says when to hold: no fresh planned action for more than ``timeout`` ticks.

    The controller calls ``should_hold`` every tick with the tick of the last fresh action it
    received (``None`` before the first); a stall is logged once when it starts and once when
    it ends.
    """

    def __init__(self, timeout: int) -> None:
        if timeout < 0:
            raise ValueError(f"Watchdog timeout must be >= 0 ticks, got {timeout}")
        self.timeout = timeout
        self.stalls = 0  # stalls so far
        self.holding = False  # whether the last call said to hold

    def should_hold(self, tick: int, last_fresh: int | None) -> bool:
        """Whether the robot must hold at ``tick`` given the tick of the last fresh action."""
        stale = last_fresh is None or tick - last_fresh > self.timeout
        if stale and not self.holding:
            self.stalls += 1
            self.holding = True
            if last_fresh is None:
                log.warning("holding position: no action received yet")
            else:
                log.warning("holding position: no fresh action for %d ticks", tick - last_fresh)
        elif not stale and self.holding:
            log.info("resumed: fresh actions again at tick %d", tick)
            self.holding = False
        return stale


def _position_index(spec: dict[str, dict], joints: tuple[str, ...]) -> np.ndarray:
    """Indices into ``observation.state`` of each action joint, matched by name."""
    names = list(spec.get(STATE, {}).get("names") or [])
    missing = [j for j in joints if j not in names]
    if missing:
        raise ValueError(
            f"SafeDriver needs the observed position of every action joint, but {missing} are "
            f"not among the observation.state names {names}: give the driver's feature_spec "
            "matching names for state and action"
        )
    return np.array([names.index(j) for j in joints])
