"""The robot-side control loop: one action to the driver every tick, chunks from a policy server.

Every tick the controller

1. waits for the tick (``runtime.clock``) and applies operator messages (e-stop, instruction
   override) that came in or that the ``operator_script`` schedules for this tick, then lets
   the high-level policy, if any, look at the robot (``runtime.hierarchy.HighLevelRunner``);
2. takes the reply to the request in flight if it came (``runtime.client``), then sends a
   request if none is in flight and the executor wants one (observing the robot only then);
3. sends exactly one action to the driver: the executor's planned action, or a hold;
4. records a row of the ``RunLog``.

The driver is wrapped in ``runtime.safety.SafeDriver`` (clamping, rate limit, e-stop) and a
``Watchdog`` holds the robot when no chunk arrived for ``watchdog_ticks``. A request that
times out or gets an error reply is given up and sent again, with a fresh observation, after
a backoff of 1, 2, 4, ... ticks (at most ``max_backoff_ticks``): a server that dies leaves
the robot holding, and it resumes when the server is back.

Simulated-clock mode (``inference_delay_ticks=k``): a reply is handed to the executor at
tick obs_tick + k exactly, waiting for it at that tick if the computation is not done yet;
with ``SimClock`` and the MuJoCo driver a run is deterministic whatever the machine's speed.

The instruction sent with a request is an operator override while one lasts, else the
high-level policy's choice once it has made one, else the task's own instruction; the log
records which (``instruction_source``: ``operator``, ``high_level`` or ``task``).

Hold reasons in the log: ``startup`` (no chunk yet), ``inferring`` (a blocking executor
waits, by design), ``starved`` (the executor ran out of actions: a stall), ``watchdog``
(no chunk for too long: a stall), ``estop``, ``stopped`` (the last tick after ``stop()``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import zmq

from runtime.client import PolicyClient, Reply, RequestTimeout
from runtime.clock import Clock
from runtime.drivers.base import Driver, Observation
from runtime.executors import Executor, PlannedAction
from runtime.protocol import (
    ChunkReply,
    EStop,
    ObservationRequest,
    OperatorInstruction,
    ProtocolError,
    decode,
)
from runtime.safety import SafeDriver, Watchdog

log = logging.getLogger(__name__)

OperatorMessage = OperatorInstruction | EStop
MAX_OPERATOR_MESSAGES = 100  # applied per tick at most
WAIT_SLICE_S = 0.05  # a blocking wait for a reply checks for stop() this often
STALL_REASONS = ("starved", "watchdog")  # holds that the executor did not plan


class HighLevel(Protocol):
    """Picks the instruction from what the robot sees (``runtime.hierarchy.HighLevelRunner``)."""

    def reset(self, task: str) -> None:
        """Forget the last episode; ``task`` is the episode's own instruction."""

    def update(self, tick: int, observe: Callable[[], Observation]) -> None:
        """Called every tick; observes (and predicts) only on the ticks it needs."""

    @property
    def instruction(self) -> str | None:
        """The instruction it chose, None before its first prediction."""


@dataclass
class _InFlight:
    request: ObservationRequest
    sent_s: float  # perf_counter at submit
    reply: ChunkReply | None = None  # received, waiting for its due tick
    round_trip_ms: float = math.nan


class Controller:
    """Runs ``executor``'s chunks from ``client`` on ``driver`` at ``clock``'s rate."""

    def __init__(
        self,
        driver: Driver,
        client: PolicyClient,
        executor: Executor,
        clock: Clock,
        *,
        robot_id: str = "robot",
        instruction: str = "",
        inference_delay_ticks: int | None = None,
        watchdog_ticks: int = 30,
        max_backoff_ticks: int = 30,
        operator_address: str | None = None,
        operator_script: Sequence[tuple[int, OperatorMessage]] = (),
        high_level: HighLevel | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """inference_delay_ticks: simulated-clock mode (module docstring), required with a
        simulated clock; operator_address: bind a PULL socket there for ``OperatorInstruction``
        and ``EStop`` messages; operator_script: (tick, message) pairs applied at those ticks
        of every run, as if they had come in on the socket; high_level: picks the instruction
        unless an operator overrides it; seed: requests carry seed * 2**20 + request_id
        (reproducible samples); stop: an event that ends ``run`` (e.g. set by a SIGINT
        handler)."""
        if clock.simulated and inference_delay_ticks is None:
            raise ValueError(
                "a simulated clock needs inference_delay_ticks (how many ticks an inference "
                "takes); for real-time inference use clock=wall"
            )
        if inference_delay_ticks is not None and inference_delay_ticks < 0:
            raise ValueError(f"inference_delay_ticks must be >= 0, got {inference_delay_ticks}")
        if max_backoff_ticks < 1:
            raise ValueError(f"max_backoff_ticks must be >= 1, got {max_backoff_ticks}")
        self.driver = driver if isinstance(driver, SafeDriver) else SafeDriver(driver)
        self.client = client
        self.executor = executor
        self.clock = clock
        self.robot_id = robot_id
        self.instruction = instruction  # the task's own instruction; an operator may override it
        self.inference_delay_ticks = inference_delay_ticks
        self.watchdog = Watchdog(watchdog_ticks)
        self.max_backoff_ticks = max_backoff_ticks
        self.seed = seed
        self.high_level = high_level
        self.stop_event = stop if stop is not None else threading.Event()
        self._script: dict[int, list[OperatorMessage]] = {}
        for tick, message in operator_script:
            self._script.setdefault(tick, []).append(message)
        self._messages: queue.SimpleQueue[OperatorMessage] = queue.SimpleQueue()
        self._context: zmq.Context | None = None
        self._operator: zmq.Socket | None = None
        if operator_address is not None:
            self._context = zmq.Context()
            self._operator = self._context.socket(zmq.PULL)
            self._operator.setsockopt(zmq.LINGER, 0)
            try:
                self._operator.bind(operator_address)
            except zmq.ZMQError as err:
                self.close()
                raise ValueError(
                    f"cannot bind the operator socket to {operator_address!r} ({err}): is "
                    "another controller using it? choose another operator_address"
                ) from None
        self._next_request_id = 0
        self._reset_run_state()

    # ---- public controls (thread-safe) --------------------------------------------------

    def stop(self) -> None:
        """End ``run`` at the next tick, which holds the robot still."""
        self.stop_event.set()

    def estop(self, reason: str) -> None:
        """Latch the e-stop: hold from now on until ``release_estop``."""
        self.driver.estop(reason)

    def release_estop(self) -> None:
        """Release the e-stop; the executor starts over with a fresh chunk."""
        self.driver.release_estop()

    def send_operator(self, message: OperatorMessage) -> None:
        """Queue an operator message; applied at the start of the next tick."""
        self._messages.put(message)

    @property
    def operator_endpoint(self) -> str | None:
        """Where the operator socket is bound (the resolved port for ``tcp://...:*``)."""
        return None if self._operator is None else self._operator.LAST_ENDPOINT.decode()

    @property
    def current_instruction(self) -> str:
        """The instruction sent with requests: an operator override while it lasts, else the
        high level's choice, else the task's."""
        return self._instruction()[0]

    @property
    def instruction_source(self) -> str:
        """Who chose ``current_instruction``: ``operator``, ``high_level`` or ``task``."""
        return self._instruction()[1]

    def _instruction(self) -> tuple[str, str]:
        if self._override is not None and self.clock.now() >= self._override[1]:
            log.info("operator instruction %r expired", self._override[0])
            self._override = None
        if self._override is not None:
            return self._override[0], "operator"
        chosen = None if self.high_level is None else self.high_level.instruction
        return (self.instruction, "task") if chosen is None else (chosen, "high_level")

    def close(self) -> None:
        """Close the operator socket (the driver and the client belong to the caller)."""
        if self._operator is not None:
            self._operator.close(linger=0)
            self._context.term()
            self._operator = self._context = None

    # ---- the loop -----------------------------------------------------------------------

    def run(self, max_ticks: int, done: Callable[[], bool] | None = None) -> RunLog:
        """Run up to ``max_ticks`` ticks, until ``done()`` after a tick, or until stopped."""
        if max_ticks < 1:
            raise ValueError(f"max_ticks must be >= 1, got {max_ticks}")
        self._reset_run_state()
        recorder = self._recorder = RunRecorder(len(self.driver.limits().names), self.clock.hz)
        if self.high_level is not None:
            self.high_level.reset(self.instruction)
        self.clock.start()
        for tick in range(max_ticks):
            lateness = self.clock.wait_next_tick()
            self._apply_operator_messages(tick)
            stopping = self.stop_event.is_set()
            if not stopping and not self.driver.estopped:
                if self.high_level is not None:
                    self.high_level.update(tick, self.driver.observe)
                self._receive(tick)
                if self._maybe_request(tick):
                    self._receive(tick)  # due at once with inference_delay_ticks=0
            planned, reason = self._decide(tick, stopping)
            if planned is None:
                self.driver.hold()
            else:
                self.driver.act(planned.action)
            recorder.tick(
                tick=tick,
                planned=planned,
                hold_reason=reason,
                delay=self.executor.delay,
                in_flight=self._in_flight is not None,
                lateness_s=lateness,
                instruction=self.current_instruction,
                instruction_source=self.instruction_source,
            )
            if stopping or (done is not None and done()):
                break
        self._abandon_in_flight()
        return recorder.finish(missed_ticks=self.clock.missed)

    def _reset_run_state(self) -> None:
        self.executor.reset()
        self._recorder: RunRecorder | None = None
        self._in_flight: _InFlight | None = None
        self._requests_sent = 0  # in this run: request seeds count from 0 in every run
        self._last_fresh: int | None = None  # tick the last chunk was delivered
        self._failures = 0  # consecutive failed requests
        self._retry_tick = 0  # no request before this tick (backoff)
        self._was_estopped = self.driver.estopped
        # operator override (instruction, expiry in clock time); dropped with the old clock
        self._override: tuple[str, float] | None = None

    def _maybe_request(self, tick: int) -> bool:
        """Send a request if none is in flight and the executor wants one; whether it did."""
        if self._in_flight is not None or tick < self._retry_tick:
            return False
        if not self.executor.wants_request(tick):
            return False
        fields = self.executor.request_fields(tick)
        request_id = self._next_request_id
        self._next_request_id += 1
        request = ObservationRequest(
            request_id=request_id,
            robot_id=self.robot_id,
            tick=tick,
            observation=self.driver.observe(),
            instruction=self.current_instruction,
            delay=fields.delay,
            execution_horizon=fields.execution_horizon,
            executor=self.executor.name,
            prev_actions=fields.prev_actions,
            seed=None if self.seed is None else self.seed * 2**20 + self._requests_sent,
        )
        self._requests_sent += 1
        self.client.submit(request)
        self._in_flight = _InFlight(request, time.perf_counter())
        return True

    def _receive(self, tick: int) -> None:
        """Take the in-flight request's reply; hand it to the executor once it is due."""
        flight = self._in_flight
        if flight is None:
            return
        obs_tick, k = flight.request.tick, self.inference_delay_ticks
        due = k is None or tick >= obs_tick + k
        if flight.reply is None:
            try:
                reply = self._wait_reply() if due and k is not None else self.client.poll(0.0)
            except RequestTimeout as err:
                self._fail(tick, "timeout", str(err))
                return
            if reply is None:
                return
            flight.round_trip_ms = (time.perf_counter() - flight.sent_s) * 1000
            if not isinstance(reply, ChunkReply):
                self._fail(tick, "error", f"server error {reply.code}: {reply.message}")
                return
            if reply.tick != obs_tick:
                self._fail(tick, "error", f"reply for tick {reply.tick}, not {obs_tick}")
                return
            flight.reply = reply
        if due:
            self.executor.on_chunk(flight.reply.actions, obs_tick, tick)
            self._recorder.request(
                flight.request, "chunk", tick, flight.round_trip_ms, flight.reply
            )
            self._in_flight, self._last_fresh, self._failures = None, tick, 0

    def _abandon_in_flight(self) -> None:
        if self._in_flight is not None:
            self._recorder.request(self._in_flight.request, "abandoned")
            self._in_flight = None

    def _wait_reply(self) -> Reply | None:
        """Block for the in-flight reply (bounded by the client's timeout, or by stop())."""
        while not self.stop_event.is_set():
            reply = self.client.poll(WAIT_SLICE_S)
            if reply is not None:
                return reply
        return None

    def _fail(self, tick: int, outcome: str, message: str) -> None:
        self._recorder.request(self._in_flight.request, outcome)
        self._in_flight = None
        self._failures += 1
        backoff = min(2 ** (self._failures - 1), self.max_backoff_ticks)
        self._retry_tick = tick + backoff
        log.warning("request failed at tick %d (%s); retrying in %d ticks", tick, message, backoff)

    def _decide(self, tick: int, stopping: bool) -> tuple[PlannedAction | None, str]:
        """The planned action for this tick and '', or None and why the robot holds."""
        if stopping:
            return None, "stopped"
        if self.driver.estopped:
            return None, "estop"
        planned = self.executor.action(tick)
        stale = self.watchdog.should_hold(tick, self._last_fresh)
        if planned is None:
            if self._last_fresh is None:
                return None, "startup"
            return None, "inferring" if self.executor.blocking else "starved"
        return (None, "watchdog") if stale else (planned, "")

    # ---- operator messages --------------------------------------------------------------

    def _apply_operator_messages(self, tick: int) -> None:
        for message in [*self._read_operator_socket(), *self._script.get(tick, ())]:
            self._messages.put(message)
        for _ in range(MAX_OPERATOR_MESSAGES):
            try:
                self._apply(self._messages.get_nowait())
            except queue.Empty:
                break
        estopped = self.driver.estopped
        if estopped != self._was_estopped:
            self._was_estopped = estopped
            if not estopped:  # released: the old plan is stale, start over
                self.executor.reset()
                self._last_fresh = None
            self._abandon_in_flight()
            log.info("tick %d: e-stop %s", tick, "engaged" if estopped else "released")

    def _read_operator_socket(self) -> list[OperatorMessage]:
        messages = []
        for _ in range(MAX_OPERATOR_MESSAGES):
            if self._operator is None or not self._operator.poll(0):
                break
            data = self._operator.recv()
            try:
                message = decode(data)
            except ProtocolError as err:
                log.warning("ignored an invalid operator message: %s", err)
                continue
            if not isinstance(message, OperatorInstruction | EStop):
                log.warning("ignored a %s on the operator socket", type(message).__name__)
                continue
            messages.append(message)
        return messages

    def _apply(self, message: OperatorMessage) -> None:
        if message.robot_id != self.robot_id:
            log.debug("ignored an operator message for robot %r", message.robot_id)
        elif isinstance(message, EStop):
            if message.engage:
                self.estop(message.reason or "operator")
            else:
                self.release_estop()
        elif message.release:
            if self._override is not None:
                log.info("operator instruction %r released", self._override[0])
            self._override = None
        else:
            expiry = self.clock.now() + message.timeout_s if message.timeout_s > 0 else math.inf
            self._override = (message.instruction, expiry)
            log.info(
                "operator instruction %r for %s",
                message.instruction,
                f"{message.timeout_s:g} s" if message.timeout_s > 0 else "until released",
            )


# ---- the run log ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLog:
    """What happened in a run: one row per tick and one per request, as numpy columns.

    ticks: tick, wall_s (since the run started), action (T, A) float32 (the planned action
    before clamping; NaN on a hold), chunk and index (-1 on a hold), delay (the estimate d),
    planned, hold_reason ('' when planned), in_flight, lateness_ms, instruction (as sent)
    and instruction_source (who chose it: 'task', 'high_level' or 'operator').
    requests: request_id, obs_tick, arrival_tick (-1 unless a chunk came), delay,
    execution_horizon, prev_len (-1: no prev_actions), round_trip_ms, server_ms (NaN unless
    a chunk came), outcome ('chunk', 'error', 'timeout' or 'abandoned').
    """

    ticks: dict[str, np.ndarray]
    requests: dict[str, np.ndarray]
    hz: float
    missed_ticks: int  # scheduled ticks the clock skipped because the loop overran

    @classmethod
    def concatenate(cls, logs: list[RunLog]) -> RunLog:
        """One log holding the rows of ``logs`` (e.g. episodes) in order, for a joint summary."""
        if not logs:
            raise ValueError("RunLog.concatenate needs at least one log")
        return cls(
            ticks={k: np.concatenate([g.ticks[k] for g in logs]) for k in logs[0].ticks},
            requests={k: np.concatenate([g.requests[k] for g in logs]) for k in logs[0].requests},
            hz=logs[0].hz,
            missed_ticks=sum(g.missed_ticks for g in logs),
        )

    def to_npz(self, path: str | Path) -> Path:
        """Write every column to ``path`` (keys ``ticks.<column>``, ``requests.<column>``);
        plain arrays only, readable with ``np.load(path, allow_pickle=False)``."""
        path = Path(path)
        arrays = {f"ticks.{k}": v for k, v in self.ticks.items()}
        arrays.update({f"requests.{k}": v for k, v in self.requests.items()})
        np.savez_compressed(path, hz=self.hz, missed_ticks=self.missed_ticks, **arrays)
        return path

    @classmethod
    def from_npz(cls, path: str | Path) -> RunLog:
        """A log written by ``to_npz``."""
        with np.load(path, allow_pickle=False) as f:
            return cls(
                ticks={k[6:]: f[k] for k in f.files if k.startswith("ticks.")},
                requests={k[9:]: f[k] for k in f.files if k.startswith("requests.")},
                hz=float(f["hz"]),
                missed_ticks=int(f["missed_ticks"]),
            )

    def summary(self) -> dict[str, float | int | dict[str, int] | None]:
        """Counts, delays, tick jitter and inference latency; None where nothing was measured."""
        t, r = self.ticks, self.requests
        reasons, counts = np.unique(t["hold_reason"][~t["planned"]], return_counts=True)
        chunk = r["outcome"] == "chunk"
        delays = (r["arrival_tick"] - r["obs_tick"])[chunk]
        jitter = np.abs(t["lateness_ms"])
        return {
            "ticks": len(t["tick"]),
            "planned_ticks": int(t["planned"].sum()),
            "hold_ticks": int((~t["planned"]).sum()),
            "stalled_ticks": int(np.isin(t["hold_reason"], STALL_REASONS).sum()),
            "holds": {str(k): int(n) for k, n in zip(reasons, counts, strict=True)},
            "requests": len(r["request_id"]),
            "chunks_received": int(chunk.sum()),
            "request_errors": int((r["outcome"] == "error").sum()),
            "request_timeouts": int((r["outcome"] == "timeout").sum()),
            "delay_ticks_mean": _stat(delays, None),
            "delay_ticks_max": _stat(delays, 100),
            "delay_estimate_last": int(t["delay"][-1]) if len(t["delay"]) else None,
            "jitter_ms_p50": _stat(jitter, 50),
            "jitter_ms_p99": _stat(jitter, 99),
            "jitter_ms_max": _stat(jitter, 100),
            "missed_ticks": self.missed_ticks,
            "server_ms_p50": _stat(r["server_ms"][chunk], 50),
            "server_ms_p99": _stat(r["server_ms"][chunk], 99),
            "round_trip_ms_p50": _stat(r["round_trip_ms"][chunk], 50),
            "round_trip_ms_p99": _stat(r["round_trip_ms"][chunk], 99),
        }


def _stat(values: np.ndarray, q: float | None) -> float | None:
    """Percentile q (the mean for None) of values, None if there are none."""
    if len(values) == 0:
        return None
    return float(np.mean(values) if q is None else np.percentile(values, q))


class RunRecorder:
    """Collects the rows of a ``RunLog`` during a run."""

    def __init__(self, action_dim: int, hz: float) -> None:
        self.action_dim = action_dim
        self.hz = hz
        self._ticks: dict[str, list] = {}
        self._requests: dict[str, list] = {}
        self._start = time.perf_counter()

    def tick(
        self,
        *,
        tick: int,
        planned: PlannedAction | None,
        hold_reason: str,
        delay: int,
        in_flight: bool,
        lateness_s: float,
        instruction: str,
        instruction_source: str = "task",
    ) -> None:
        hold = np.full(self.action_dim, np.nan, np.float32)
        _append(
            self._ticks,
            tick=tick,
            wall_s=time.perf_counter() - self._start,
            action=hold if planned is None else planned.action,
            chunk=-1 if planned is None else planned.chunk,
            index=-1 if planned is None else planned.index,
            delay=delay,
            planned=planned is not None,
            hold_reason=hold_reason,
            in_flight=in_flight,
            lateness_ms=lateness_s * 1000,
            instruction=instruction,
            instruction_source=instruction_source,
        )

    def request(
        self,
        request: ObservationRequest,
        outcome: str,
        arrival_tick: int = -1,
        round_trip_ms: float = math.nan,
        reply: ChunkReply | None = None,
    ) -> None:
        prev = request.prev_actions
        _append(
            self._requests,
            request_id=request.request_id,
            obs_tick=request.tick,
            arrival_tick=arrival_tick,
            delay=request.delay,
            execution_horizon=request.execution_horizon,
            prev_len=-1 if prev is None else len(prev),
            round_trip_ms=round_trip_ms,
            server_ms=math.nan if reply is None else reply.server_time_ms,
            outcome=outcome,
        )

    def finish(self, missed_ticks: int) -> RunLog:
        return RunLog(
            ticks=_columns(self._ticks, TICK_DTYPES, self.action_dim),
            requests=_columns(self._requests, REQUEST_DTYPES, self.action_dim),
            hz=self.hz,
            missed_ticks=missed_ticks,
        )


TICK_DTYPES = {
    "tick": np.int64,
    "wall_s": np.float64,
    "action": np.float32,
    "chunk": np.int64,
    "index": np.int64,
    "delay": np.int64,
    "planned": bool,
    "hold_reason": str,
    "in_flight": bool,
    "lateness_ms": np.float64,
    "instruction": str,
    "instruction_source": str,
}
REQUEST_DTYPES = {
    "request_id": np.int64,
    "obs_tick": np.int64,
    "arrival_tick": np.int64,
    "delay": np.int64,
    "execution_horizon": np.int64,
    "prev_len": np.int64,
    "round_trip_ms": np.float64,
    "server_ms": np.float64,
    "outcome": str,
}


def _append(rows: dict[str, list], **values: object) -> None:
    for key, value in values.items():
        rows.setdefault(key, []).append(value)


def _columns(rows: dict[str, list], dtypes: dict[str, type], action_dim: int) -> dict:
    """Lists -> arrays with the right dtype, also for a run with no rows."""
    columns = {}
    for key, dtype in dtypes.items():
        values = rows.get(key, [])
        if key == "action":
            columns[key] = np.array(values, dtype).reshape(len(values), action_dim)
        else:
            columns[key] = np.array(values, dtype)
    return columns


# ---- simulated episodes ---------------------------------------------------------------------


class SimDriver(Driver, Protocol):
    """A driver that can run evaluation episodes (``runtime.drivers.mujoco.MujocoDriver``)."""

    def reset(self, seed: int | None = None) -> Observation: ...

    def success(self) -> bool: ...

    @property
    def instruction(self) -> str: ...

    @property
    def max_steps(self) -> int: ...


@dataclass(frozen=True)
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    ticks: int
    log: RunLog


def run_episodes(
    driver: SimDriver,
    client: PolicyClient,
    executor_factory: Callable[[], Executor],
    episodes: int,
    seed: int = 0,
    *,
    clock: Clock,
    max_ticks: int | None = None,
    **controller_options: object,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes; episode k resets the scene with ``seed + k`` and runs, with
    a fresh executor, until the task succeeds or after ``driver.max_steps`` ticks (or
    ``max_ticks`` if fewer).

    ``controller_options`` go to ``Controller``; a set ``stop`` event ends the current
    episode (holding the robot) and skips the rest.
    """
    controller = Controller(driver, client, executor_factory(), clock, **controller_options)
    results = []
    try:
        for k in range(episodes):
            if k > 0:
                controller.executor = executor_factory()
            driver.reset(seed + k)
            controller.driver.resync()  # the reset moved the robot
            controller.instruction = driver.instruction
            controller.seed = seed + k
            ticks = driver.max_steps if max_ticks is None else min(max_ticks, driver.max_steps)
            run_log = controller.run(ticks, done=driver.success)
            result = EpisodeResult(
                k, seed + k, driver.success(), len(run_log.ticks["tick"]), run_log
            )
            results.append(result)
            log.info(
                "episode %d (seed %d): success=%s after %d ticks",
                k,
                seed + k,
                result.success,
                result.ticks,
            )
            if controller.stop_event.is_set():
                break
    finally:
        controller.close()
    return results
