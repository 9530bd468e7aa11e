"""Tick jitter of the control loop: ``WallClock`` against plain ``time.sleep`` pacing.

Prints ONE JSON line. For each rate (30 and 50 Hz) and pacing it runs a trivial driver for
``--seconds`` and reports |actual - scheduled| tick start times (ms, p50 / p99 / max), where
tick k is scheduled at t0 + k / hz:

  controller      the full ``Controller`` loop (naive executor, an in-process constant policy)
                  paced by ``WallClock``: what a robot gets;
  wall_clock      a bare loop paced by ``WallClock`` (sleep, then spin the last 2 ms);
  sleep_deadline  a bare loop with ``time.sleep`` until each tick's deadline (no spin);
  sleep_period    a bare loop with ``time.sleep(1 / hz)`` after each tick (drifts).

    uv run python bench/jitter.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from runtime.robot.client import LocalPolicyClient
from runtime.robot.clock import WallClock
from runtime.robot.controller import Controller
from runtime.robot.drivers.base import ActionLimits
from runtime.robot.executors import make_executor
from runtime.robot.testing import ConstantPolicy, JumpDriver

RATES_HZ = (30, 50)
H, A = 16, 6


def null_driver() -> JumpDriver:
    """A robot that takes every command instantly (all zeros here, so it never moves)."""
    names = tuple(f"j{i}" for i in range(A))
    limits = ActionLimits(low=[-1] * A, high=[1] * A, max_delta=[0.1] * A, names=names)
    return JumpDriver(names, limits=limits)


def stats(deviation_s: np.ndarray, missed: int = 0) -> dict[str, float | int]:
    ms = np.abs(deviation_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 4),
        "ticks": len(ms),
        "missed": missed,
    }


def controller_loop(hz: float, ticks: int) -> dict:
    client = LocalPolicyClient(ConstantPolicy(H, A))
    executor = make_executor("naive", H, execution_horizon=4, initial_delay=2)
    controller = Controller(null_driver(), client, executor, WallClock(hz), watchdog_ticks=H)
    try:
        log = controller.run(ticks)
    finally:
        client.close()
    return stats(log.ticks["lateness_ms"] / 1000, log.missed_ticks)


def wall_clock_loop(hz: float, ticks: int) -> dict:
    driver, clock = null_driver(), WallClock(hz)
    clock.start()
    late = []
    for _ in range(ticks):
        late.append(clock.wait_next_tick())
        driver.act(np.zeros(A, np.float32))
    return stats(np.array(late), clock.missed)


def sleep_loop(hz: float, ticks: int, to_deadline: bool) -> dict:
    driver, period = null_driver(), 1.0 / hz
    t0 = time.perf_counter()
    deviation = []
    for k in range(ticks):
        if k:
            wait = t0 + k * period - time.perf_counter() if to_deadline else period
            time.sleep(max(wait, 0.0))
        deviation.append(time.perf_counter() - (t0 + k * period))
        driver.act(np.zeros(A, np.float32))
    return stats(np.array(deviation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="run time per rate and loop")
    args = parser.parse_args()
    loops: dict[str, Callable[[float, int], dict]] = {
        "controller": controller_loop,
        "wall_clock": wall_clock_loop,
        "sleep_deadline": lambda hz, n: sleep_loop(hz, n, to_deadline=True),
        "sleep_period": lambda hz, n: sleep_loop(hz, n, to_deadline=False),
    }
    results = {
        f"{hz}hz": {name: loop(hz, int(args.seconds * hz)) for name, loop in loops.items()}
        for hz in RATES_HZ
    }
    print(json.dumps({"bench": "tick_jitter", "seconds_per_loop": args.seconds, **results}))


if __name__ == "__main__":
    main()
