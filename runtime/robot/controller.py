"""The robot-side control loop: one action to the driver every tick, chunks from a policy server.

Every tick the controller

1. waits for the tick (``runtime.robot.clock``) and applies operator messages (e-stop, instruction
   override) that came in or that the ``operator_script`` schedules for this tick, then lets
   the high-level policy, if any, look at the robot (``runtime.serving.hierarchy.HighLevelRunner``);
2. takes the reply to the request in flight if it came (``runtime.robot.client``), then sends a
   request if none is in flight and the executor wants one (observing the robot only then);
3. sends exactly one action to the driver: the executor's planned action, or a hold;
4. records a row of the ``RunLog``.

The driver is wrapped in ``runtime.robot.safety.SafeDriver`` (clamping, rate limit, e-stop) and a
``Watchdog`` holds the robot when no chunk arrived for ``watchdog_ticks``. A request that
times out or gets an error reply is given up and sent again, with a fresh observation, after
a backoff of 1, 2, 4, ... ticks (at most ``max_backoff_ticks``): a server that dies leaves
the robot holding, and it resumes when the server is back.

Simulated-clock mode (``inference_delay_ticks=k``): a reply is handed to the executor at
tick obs_tick + k exactly, waiting for it at that tick if the computation is not done yet;
with ``SimClock`` and the MuJoCo driver a run is deterministic whatever the machine's speed.
Simulated time stands still during that wait (nothing moves), which ``stop()`` or an e-stop
message ends at once. With a wall clock the loop never waits for the network: ``k`` is then
the earliest tick a reply is used at, a reply not there yet is looked for again next tick,
and the watchdog holds the robot at the tick rate while none comes.

Operator messages are read at the start of every tick and again after its work, before the
action is chosen, so an e-stop takes effect at the first tick that starts after it arrived
(at the same tick if it arrives while a simulated-clock tick waits). The operator socket
takes single-frame messages of at most ``OPERATOR_MAX_BYTES``. With ``operator_curve`` keys
only listed operators can connect at all; without, anyone who reaches the socket may engage
the e-stop, but releasing it or overriding the instruction is accepted from this machine
only (loopback TCP, ipc://, inproc://), and binding beyond loopback logs a warning.

The instruction sent with a request is an operator override while one lasts, else the
high-level policy's choice once it has made one, else the task's own instruction; the log
records which (``instruction_source``: ``operator``, ``high_level`` or ``task``).

A policy that reads earlier ticks too (``MetadataReply.observation_history``, e.g. a state
policy that sees its own motion) gets ``observation_history``: the controller then observes
the robot every tick, keeps the low-dimensional features the policy's ``<key>.history``
features name, and adds them to each request stacked at those offsets
(``ObservationHistory``).

Hold reasons in the log: ``startup`` (no chunk yet), ``inferring`` (a blocking executor
waits, by design), ``starved`` (the executor ran out of actions: a stall), ``watchdog``
(no chunk for too long: a stall), ``estop``, ``stopped`` (the last tick after ``stop()``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from runtime.curve import CurveKeys, is_loopback, secure_server
from runtime.logs import RateLimitedLog
from runtime.robot.client import PolicyClient, Reply, RequestTimeout
from runtime.robot.clock import Clock
from runtime.robot.display import Display
from runtime.robot.drivers.base import Driver, Observation
from runtime.robot.executors import Executor, PlannedAction
from runtime.robot.operator import OperatorMessage
from runtime.robot.runlog import RunLog, RunRecorder
from runtime.robot.safety import SafeDriver, Watchdog
from runtime.wire.keys import HISTORY_SUFFIX
from runtime.wire.protocol import (
    ChunkReply,
    EStop,
    ObservationRequest,
    OperatorInstruction,
    ProtocolError,
    decode,
)

log = logging.getLogger(__name__)

MAX_OPERATOR_MESSAGES = 100  # applied per tick at most; also what the socket queues
OPERATOR_MAX_BYTES = 64 * 1024  # an operator message's size limit (ZMQ drops bigger frames)
WAIT_SLICE_S = 0.05  # a blocking wait for a reply checks for stop() this often


class HighLevel(Protocol):
    """Picks the instruction from what the robot sees (``runtime.serving.hierarchy``)."""

    def reset(self, task: str) -> None:
        """Forget the last episode; ``task`` is the episode's own instruction."""

    def update(self, tick: int, observe: Callable[[], Observation]) -> None:
        """Called every tick; observes (and predicts) only on the ticks it needs."""

    @property
    def instruction(self) -> str | None:
        """The instruction it chose, None before its first prediction."""

    @property
    def correction(self) -> float | None:
        """Its probability that a correction is needed (None: not predicted yet)."""


class ObservationHistory:
    """The recent ticks' values of some observation keys, for policies that read earlier
    ticks: ``stacked(tick)`` is ``{key + ".history": (T, ...)}`` at ``tick + offset`` for each
    offset (< 0, oldest first). A tick before the run's first, or one not observed (e.g. while
    e-stopped), takes the latest observed tick before it, or the run's first."""

    def __init__(self, keys: Sequence[str], offsets: Sequence[int]) -> None:
        if not keys or not offsets or any(o >= 0 for o in offsets):
            raise ValueError(f"observation history needs keys and offsets < 0, got {keys} "
                             f"and {offsets}")  # fmt: skip
        self.keys, self.offsets = tuple(keys), tuple(int(o) for o in offsets)
        self.span = -min(self.offsets)  # ticks kept before the current one
        self.reset()

    @classmethod
    def of_policy(
        cls, features: dict[str, dict], offsets: Sequence[int] | None
    ) -> ObservationHistory | None:
        """From a policy's metadata (its features and ``observation_history``); None when it
        reads the current tick only."""
        keys = [k.removesuffix(HISTORY_SUFFIX) for k in features if k.endswith(HISTORY_SUFFIX)]
        if not offsets or not keys:
            return None
        return cls(keys, offsets)

    def reset(self) -> None:
        self._seen: dict[int, dict[str, np.ndarray]] = {}

    def record(self, tick: int, observation: Observation) -> None:
        missing = [k for k in self.keys if k not in observation]
        if missing:
            raise ValueError(f"the policy reads the history of {missing}, which the "
                             f"observation lacks (it has {sorted(observation)})")  # fmt: skip
        self._seen[tick] = {k: np.array(observation[k], copy=True) for k in self.keys}
        for old in [t for t in self._seen if t < tick - self.span]:
            del self._seen[old]

    def stacked(self, tick: int) -> dict[str, np.ndarray]:
        ticks = sorted(self._seen)
        picked = []
        for offset in self.offsets:
            earlier = [t for t in ticks if t <= tick + offset]
            picked.append(self._seen[earlier[-1] if earlier else ticks[0]])
        return {k + HISTORY_SUFFIX: np.stack([p[k] for p in picked]) for k in self.keys}


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
        operator_curve: CurveKeys | None = None,
        operator_script: Sequence[tuple[int, OperatorMessage]] = (),
        operator_watch: Callable[[int], Sequence[OperatorMessage]] | None = None,
        high_level: HighLevel | None = None,
        join_task: Callable[[str, str], str] | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
        display: Display | None = None,
        observation_history: ObservationHistory | None = None,
    ) -> None:
        """inference_delay_ticks: simulated-clock mode (module docstring), required with a
        simulated clock; operator_address: bind a PULL socket there for ``OperatorInstruction``
        and ``EStop`` messages (module docstring: who may send what); operator_curve:
        CURVE keys for it, laid out as a policy server's (``runtime.curve``);
        operator_script: (tick, message) pairs applied at those ticks
        of every run, as if they had come in on the socket; operator_watch: called every tick
        with the tick, returns messages of an operator watching the robot (as if they had
        come in on the socket; ``runtime.robot.operator.WatchingOperator``); high_level:
        picks the instruction unless an operator overrides it; join_task: for a low level
        trained with ``instruction=hierarchy+task``, what is sent when a high level or an
        operator chose the instruction: ``join_task(chosen, task)``; seed: requests carry
        seed * 2**20 + request_id (reproducible samples); stop: an event that ends ``run``
        (e.g. set by a SIGINT handler); display: told every tick, to show the run live
        (``runtime.robot.display``); observation_history: the earlier ticks the policy
        reads (``ObservationHistory.of_policy``; the robot is then observed every tick)."""
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
        self.join_task = join_task
        self.display = display
        self.history = observation_history
        self.stop_event = stop if stop is not None else threading.Event()
        self.operator_watch = operator_watch  # tick -> messages of a watching operator
        self._script: dict[int, list[OperatorMessage]] = {}
        for tick, message in operator_script:
            self._script.setdefault(tick, []).append(message)
        self._messages: queue.SimpleQueue[OperatorMessage] = queue.SimpleQueue()
        self._context: zmq.Context | None = None
        self._operator: zmq.Socket | None = None
        self._auth: ThreadAuthenticator | None = None
        self._operator_log = RateLimitedLog(log, 1.0)  # a flood of bad messages: one a second
        self._operator_curve = operator_curve is not None
        if operator_address is not None:
            self._bind_operator(operator_address, operator_curve)
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
            chosen, source = self._override[0], "operator"
        else:
            chosen = None if self.high_level is None else self.high_level.instruction
            if chosen is None:
                return self.instruction, "task"
            source = "high_level"
        return (chosen if self.join_task is None else self.join_task(chosen, self.instruction),
                source)  # fmt: skip

    def close(self) -> None:
        """Close the operator socket (the driver and the client belong to the caller)."""
        if self._operator is not None:
            self._operator.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._context is not None:
            self._context.term()
        self._operator = self._context = self._auth = None

    def _bind_operator(self, address: str, curve: CurveKeys | None) -> None:
        self._context = zmq.Context()
        self._operator = self._context.socket(zmq.PULL)
        self._operator.setsockopt(zmq.LINGER, 0)
        self._operator.setsockopt(zmq.MAXMSGSIZE, OPERATOR_MAX_BYTES)
        self._operator.setsockopt(zmq.RCVHWM, MAX_OPERATOR_MESSAGES)
        try:
            if curve is not None:
                self._auth = secure_server(self._context, self._operator, curve)
            self._operator.bind(address)
        except zmq.ZMQError as err:
            self.close()
            raise ValueError(
                f"cannot bind the operator socket to {address!r} ({err}): is another "
                "controller using it? choose another operator_address"
            ) from None
        except BaseException:
            self.close()
            raise
        if curve is None and not is_loopback(self.operator_endpoint):
            log.warning(
                "operator socket on %s without CURVE keys: anyone who can reach it can e-stop "
                "the robot (only local operators may release it or change its instruction); "
                "set operator_curve_keys_dir for anything beyond loopback",
                self.operator_endpoint,
            )

    # ---- the loop -----------------------------------------------------------------------

    def run(self, max_ticks: int, done: Callable[[], bool] | None = None) -> RunLog:
        """Run up to ``max_ticks`` ticks, until ``done()`` after a tick, or until stopped."""
        if max_ticks < 1:
            raise ValueError(f"max_ticks must be >= 1, got {max_ticks}")
        self._reset_run_state()
        recorder = self._recorder = RunRecorder(len(self.driver.limits().names), self.clock.hz)
        if self.high_level is not None:
            self.high_level.reset(self.instruction)
        if self.display is not None:
            self.display.start_episode(self.instruction)
        self.clock.start()
        for tick in range(max_ticks):
            lateness = self.clock.wait_next_tick()
            self._apply_operator_messages(tick)
            stopping = self.stop_event.is_set()
            if not stopping and not self.driver.estopped:
                if self.high_level is not None:
                    self.high_level.update(tick, self.driver.observe)
                if self.history is not None:
                    self._observation = self.driver.observe()
                    self.history.record(tick, self._observation)
                self._receive(tick)
                if self._maybe_request(tick):
                    self._receive(tick)  # due at once with inference_delay_ticks=0
                self._apply_operator_messages(tick, scripted=False)  # came while it worked
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
                correction=getattr(self.high_level, "correction", None),
            )
            if self.display is not None:
                self.display.tick(tick, self.driver.observe, planned, reason,
                                  self.current_instruction, self.instruction_source)  # fmt: skip
            if stopping or (done is not None and done()):
                break
        self._abandon_in_flight()
        return recorder.finish(missed_ticks=self.clock.missed)

    def _reset_run_state(self) -> None:
        self.executor.reset()
        if self.history is not None:
            self.history.reset()
        self._observation: Observation = {}
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
        if self.history is None:
            observation = self.driver.observe()
        else:  # observed at the start of this tick
            observation = {**self._observation, **self.history.stacked(tick)}
        request = ObservationRequest(
            request_id=request_id,
            robot_id=self.robot_id,
            tick=tick,
            observation=observation,
            instruction=self.current_instruction,
            delay=fields.delay,
            execution_horizon=fields.execution_horizon,
            sampling=self.executor.sampling,
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
            wait = due and self.clock.simulated  # a wall clock never waits for the network
            try:
                reply = self._wait_reply() if wait else self.client.poll(0.0)
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
        """Simulated clock: wait for the in-flight reply, bounded by the client's timeout;
        stop() or an e-stop message (applied at this very tick) ends the wait."""
        while not self.stop_event.is_set() and not self.driver.estopped:
            reply = self.client.poll(WAIT_SLICE_S)
            if reply is not None:
                return reply
            messages = self._read_operator_socket()
            for message in messages:
                self._messages.put(message)  # applied once this tick's work is done
            if any(isinstance(m, EStop) and m.engage for m in messages):
                break
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

    def _apply_operator_messages(self, tick: int, scripted: bool = True) -> None:
        """Apply what came on the socket (and, with ``scripted``, the script's messages for
        this tick)."""
        script = list(self._script.get(tick, ())) if scripted else []
        if scripted and self.operator_watch is not None:
            script += self.operator_watch(tick)
        for message in [*self._read_operator_socket(), *script]:
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
        """Valid operator messages waiting on the socket, from peers allowed to send them."""
        messages = []
        for _ in range(MAX_OPERATOR_MESSAGES):
            if self._operator is None or not self._operator.poll(0):
                break
            frames = self._operator.recv_multipart(copy=False)
            if len(frames) != 1:
                self._operator_log.warning(
                    "ignored an operator message of %d frames: send one", len(frames)
                )
                continue
            try:
                message = decode(frames[0].buffer)
            except ProtocolError as err:
                self._operator_log.warning("ignored an invalid operator message: %s", err)
                continue
            if not isinstance(message, OperatorInstruction | EStop):
                self._operator_log.warning(
                    "ignored a %s on the operator socket", type(message).__name__
                )
            elif self._trusted(frames[0]) or (isinstance(message, EStop) and message.engage):
                messages.append(message)
            else:
                self._operator_log.warning(
                    "ignored a %s from %s: without operator CURVE keys only a local operator "
                    "may release the e-stop or change the instruction",
                    message.TYPE,
                    _peer(frames[0]),
                )
        return messages

    def _trusted(self, frame: zmq.Frame) -> bool:
        """Whether the frame's sender may release the e-stop and override the instruction:
        any peer that passed CURVE authentication, else a peer on this machine."""
        peer = _peer(frame)
        return self._operator_curve or peer is None or is_loopback(peer)

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


def _peer(frame: zmq.Frame) -> str | None:
    """The sender's IP address of a frame received over TCP (None over ipc:// or inproc://)."""
    try:
        return frame.get("Peer-Address") or None
    except zmq.ZMQError:
        return None


# ---- simulated episodes ---------------------------------------------------------------------


class SimDriver(Driver, Protocol):
    """A driver that can run evaluation episodes (``runtime.robot.drivers.mujoco.MujocoDriver``)."""

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
    goal_distance: float | None = None  # m, what the task moves to where it must go, at the end
    failure: str | None = None  # the task's failure class (None: success, or not reported)

    def as_dict(self) -> dict:
        """The episode's row of a run summary (without the log)."""
        return {"seed": self.seed, "success": self.success, "ticks": self.ticks,
                "goal_distance": self.goal_distance, "failure": self.failure}  # fmt: skip


def start_episode(
    controller: Controller,
    driver: SimDriver,
    seed: int,
    executor: Executor | None = None,
    max_ticks: int | None = None,
) -> int:
    """Reset the simulated scene with ``seed`` for the controller's next episode (a fresh
    ``executor`` if given, the episode's instruction and request seed); returns its ticks:
    the task's ``max_steps``, or ``max_ticks`` if fewer."""
    if executor is not None:
        controller.executor = executor
    driver.reset(seed)
    controller.driver.resync()  # the reset moved the robot
    controller.instruction, controller.seed = driver.instruction, seed
    return driver.max_steps if max_ticks is None else min(max_ticks, driver.max_steps)


def with_injected_failures(run_log: RunLog, driver: object, seed: int) -> RunLog:
    """The episode's log with an ``injected`` tick column: the kind of the failure the
    driver injected ("push", "knock", "drop") on the ticks it acted, '' elsewhere; the log
    as it is for a driver that injects none (``DisturbedMujocoDriver`` does)."""
    kinds = getattr(driver, "kinds", None)
    if kinds is None:
        return run_log
    ticks = run_log.ticks["tick"]
    column = np.full(len(ticks), "", dtype="<U8")
    if seed in kinds:
        onset, duration = driver.pushes[seed], driver.disturbance.ticks
        column[(ticks >= onset) & (ticks < onset + duration)] = kinds[seed]
    return dataclasses.replace(run_log, ticks={**run_log.ticks, "injected": column})


def with_sim_states(run_log: RunLog, driver: object) -> RunLog:
    """The episode's log with an ``observation.state`` tick column (T, S): the joint state at
    the start of each tick, from a simulator driver that keeps it (``MujocoDriver.states``),
    so the run can be replayed and compared; the log as it is for other drivers."""
    states = getattr(driver, "states", None)
    n = len(run_log.ticks["tick"])
    if not states or len(states) < n:
        return run_log
    column = np.stack(states[:n]).astype(np.float32)
    return dataclasses.replace(run_log, ticks={**run_log.ticks, "observation.state": column})


def run_episodes(
    driver: SimDriver,
    client: PolicyClient,
    executor_factory: Callable[[], Executor],
    episodes: int,
    seed: int = 0,
    *,
    clock: Clock,
    max_ticks: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    **controller_options: object,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes; episode k resets the scene with ``seed + k`` and runs, with
    a fresh executor, until the task succeeds or after ``driver.max_steps`` ticks (or
    ``max_ticks`` if fewer).

    ``controller_options`` go to ``Controller``; a set ``stop`` event ends the current
    episode (holding the robot) and skips the rest. ``on_episode(result)`` runs after each
    episode, before the next reset (e.g. to save the driver's frames).
    """
    controller = Controller(driver, client, executor_factory(), clock, **controller_options)
    results = []
    try:
        for k in range(episodes):
            ticks = start_episode(
                controller, driver, seed + k, executor_factory() if k > 0 else None, max_ticks
            )
            run_log = controller.run(ticks, done=driver.success)
            run_log = with_sim_states(with_injected_failures(run_log, driver, seed + k), driver)
            distance, failure = driver.outcome() if hasattr(driver, "outcome") else (None, None)
            result = EpisodeResult(
                k, seed + k, driver.success(), len(run_log.ticks["tick"]), run_log,
                goal_distance=None if distance is None else round(float(distance), 4),
                failure=failure,
            )  # fmt: skip
            results.append(result)
            if on_episode is not None:
                on_episode(result)
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
