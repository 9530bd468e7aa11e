"""Control clocks: when each tick of the controller loop starts.

Both clocks share one interface (``Clock``). ``WallClock`` paces real time: tick k is
scheduled at t0 + k / hz (never t_prev + 1 / hz, so no drift accumulates) and reached with
``precise_sleep``. A tick that starts late by less than a period runs at once and the schedule
catches up; one that starts a whole period or more late drops the slots it missed (counted in
``missed``) and runs in the next free slot, so the loop never bursts to catch up. ``wait_next_tick``
returns each tick's lateness (actual - scheduled start).

``SimClock`` is the simulated-clock mode: no sleeping, time advances exactly one period per
tick. With the MuJoCo driver (which steps the physics one tick per action) a run is then
deterministic and as fast as the machine allows; inference delay is emulated by the
controller (``inference_delay_ticks``).
"""

from __future__ import annotations

import time
from typing import Protocol

SPIN_S = 0.002  # precise_sleep spins (busy-waits) for the last SPIN_S seconds


def precise_sleep(dt: float, spin_s: float = SPIN_S) -> None:
    """Sleep ``dt`` seconds: ``time.sleep`` for all but the last ``spin_s``, then spin.

    ``time.sleep`` may overshoot by a scheduler quantum; spinning the tail on
    ``time.perf_counter`` lands within microseconds (as diffusion_policy's ``precise_wait``).
    """
    deadline = time.perf_counter() + dt
    if dt > spin_s:
        time.sleep(dt - spin_s)
    while time.perf_counter() < deadline:
        pass


class Clock(Protocol):
    """What the controller loop needs from a clock."""

    hz: float  # ticks per second
    simulated: bool  # True: time is the tick count, nothing sleeps
    missed: int  # scheduled ticks skipped since start() because the loop overran

    def start(self) -> None:
        """Make the next ``wait_next_tick`` tick 0, starting now; forget earlier statistics."""
        ...

    def wait_next_tick(self) -> float:
        """Block until the next tick's scheduled start; return its lateness in seconds."""
        ...

    def now(self) -> float:
        """Seconds since tick 0 (simulated seconds for a simulated clock)."""
        ...


class WallClock:
    """Real-time ticks at ``hz`` against ``time.perf_counter``, drift-free (module docstring)."""

    simulated = False

    def __init__(self, hz: float, spin_s: float = SPIN_S) -> None:
        if not hz > 0:
            raise ValueError(f"WallClock needs hz > 0, got {hz}")
        self.hz = float(hz)
        self.spin_s = spin_s
        self.missed = 0  # scheduled slots skipped because a tick overran
        self._t0: float | None = None
        self._slot = -1  # index of the last slot a tick ran in

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._slot = -1
        self.missed = 0

    def wait_next_tick(self) -> float:
        if self._t0 is None:
            raise RuntimeError("WallClock.wait_next_tick() before start(): call start() first")
        period = 1.0 / self.hz
        self._slot += 1
        behind = time.perf_counter() - (self._t0 + self._slot * period)
        if behind >= period:  # overran by whole periods: drop those slots
            skipped = int(behind // period)
            self._slot += skipped
            self.missed += skipped
        scheduled = self._t0 + self._slot * period
        wait = scheduled - time.perf_counter()
        if wait > 0:
            precise_sleep(wait, self.spin_s)
        return time.perf_counter() - scheduled

    def now(self) -> float:
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0


class SimClock:
    """Simulated time: each ``wait_next_tick`` returns at once and advances one period."""

    simulated = True

    def __init__(self, hz: float) -> None:
        if not hz > 0:
            raise ValueError(f"SimClock needs hz > 0, got {hz}")
        self.hz = float(hz)
        self.missed = 0  # never: a simulated tick cannot be late
        self._tick = -1

    def start(self) -> None:
        self._tick = -1

    def wait_next_tick(self) -> float:
        self._tick += 1
        return 0.0

    def now(self) -> float:
        return max(self._tick, 0) / self.hz


def make_clock(kind: str, hz: float) -> Clock:
    """``"wall"`` -> ``WallClock(hz)``, ``"sim"`` -> ``SimClock(hz)``."""
    clocks = {"wall": WallClock, "sim": SimClock}
    if kind not in clocks:
        raise ValueError(f"unknown clock {kind!r}: use 'sim' (simulated ticks) or 'wall'")
    return clocks[kind](hz)
