"""Executors: when the controller asks for the next action chunk and how chunks become actions.

One control tick executes one action. A chunk holds H actions and is aligned to the tick of
the observation it was computed from (obs_tick): action i is meant for tick obs_tick + i.
Inference takes d ticks (the inference delay), so a chunk arrives at tick obs_tick + d.

The asynchronous executors (naive, rtc, rtc_hard, rtc_trained) request a new chunk once s
actions (the execution horizon) of the current one have run, keep executing the current
chunk while the request is served, and switch at the tick the new chunk arrives, at index d
(Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies",
Alg. 1)::

    tick           c0   ...  t0-1   | t0   ...  t0+d-1   | t0+d  ...  t0+s
    current chunk  C[0] ...  C[s-1] | C[s] ...  C[s+d-1] | (dropped)
    request                         | obs at t0, served during these d ticks
    new chunk                       | N[0] ...  N[d-1]   | N[d]  ...  N[s]: next request
                                      `- never executed: those ticks ran C[s:s+d]; RTC makes
                                         N[:d] agree with them, so the seam is smooth

The request at t0 = c0 + s carries prev_actions = C[s:], the n = H - s actions of the
current chunk for ticks t0, t0 + 1, ... (position i of the new chunk), the delay estimate d
and s (the actions of the current chunk due before t0: more than planned when a reply came
late). For the seam to work, d <= s (one request in flight at a time) and s <= H - d (the
current chunk lasts until the new one arrives): s = max(d, s_min) (``choose_execution_horizon``
raises for settings that break it), and a measured delay above min(H - s_min, H // 2) is
clamped there with a warning (the robot then holds while it waits). The executors differ
only in what the server does with the request (``runtime.serving.sampling``): naive sends no
prev_actions, rtc guides towards them (soft mask), rtc_hard with the hard mask,
rtc_trained conditions on them.

``sync`` requests, holds still until the chunk arrives, then executes its first s actions
from index 0 (the robot did not move while it waited) and requests again. ``ensemble`` is
ACT's temporal ensembling (Zhao et al. 2023): it requests whenever nothing is in flight and
executes, at each tick, the average of every received chunk's action for that tick, weighted
exp(-m * i) with i = 0 the oldest chunk.

Delay estimate: d = the maximum of the last b measured delays (RTC paper, Alg. 1), each
measured from actions actually consumed: (tick the new chunk was first consumed) - obs_tick;
before the first measurement, ``initial_delay``.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from runtime.wire.protocol import MAX_BID_SAMPLES

log = logging.getLogger(__name__)

EXECUTORS = {  # name -> the sampling method its requests ask the server for
    "sync": "plain",
    "naive": "plain",
    "ensemble": "plain",
    "rtc": "guided:exp",  # the soft mask (Black, Galliker, Levine 2025, eq. 5)
    "rtc_hard": "guided:zeros",  # only the d frozen actions are guided
    "rtc_trained": "prefix",  # training-time RTC (Black, Ren, Equi, Levine 2025)
    "bid": "bid:16",  # Bidirectional Decoding (Liu et al. 2024) over ``samples`` = 16 chunks
}
DELAY_WINDOW = 10  # b, measured delays the estimate is the maximum of

# What each executor setting means (``rtvla run --help`` shows these next to the values).
SETTING_DOCS = {
    "execution_horizon": "s: actions executed from each chunk before the next one takes over "
    "(sync: null = H // 2; the others: the minimum s, raised to the measured delay)",
    "initial_delay": "inference delay d in ticks assumed until one is measured",
    "delay_window": "the delay estimate is the largest of this many measured delays",
    "coeff": "temporal ensembling: the i-th oldest chunk weighs exp(-coeff * i) (ACT's m)",
    "samples": "N: chunks drawn per request, one batch on the server; the most coherent is kept",
}


@dataclass(frozen=True)
class RequestFields:
    """What an executor puts into an observation request besides the observation."""

    prev_actions: np.ndarray | None  # (n, A) the current chunk's actions for ticks >= obs_tick
    delay: int  # d, estimated inference delay in ticks
    execution_horizon: int  # s, actions executed from the current chunk before this request


class PlannedAction(NamedTuple):
    """The action an executor plans for a tick, and where it comes from."""

    action: np.ndarray  # (A,)
    chunk: int  # id of the chunk it comes from (the newest one, for an ensemble)
    index: int  # its index in that chunk


class Executor(Protocol):
    """Decides when to request a chunk and which action each tick executes."""

    name: str  # one of EXECUTORS, for logs
    sampling: str  # sent with each request: the server's sampling method (EXECUTORS[name])
    blocking: bool  # True: the robot holds still while a chunk is computed (sync)

    @property
    def delay(self) -> int:
        """The current inference delay estimate d, in ticks."""
        ...

    def wants_request(self, tick: int) -> bool:
        """Whether to send a request at ``tick`` (asked only when none is in flight)."""
        ...

    def request_fields(self, tick: int) -> RequestFields:
        """The executor's part of the request sent at ``tick``."""
        ...

    def on_chunk(self, actions: np.ndarray, obs_tick: int, arrival_tick: int) -> None:
        """Take a chunk (H, A) computed from the observation at ``obs_tick``."""
        ...

    def action(self, tick: int) -> PlannedAction | None:
        """The action for ``tick`` (called once per tick), or None: nothing planned, hold."""
        ...

    def reset(self) -> None:
        """Drop every chunk (after an e-stop or a new episode); keep the delay estimate."""
        ...


class DelayEstimator:
    """d = max of the last ``window`` measured delays, ``initial`` before any (RTC, Alg. 1)."""

    def __init__(self, initial: int, window: int = DELAY_WINDOW) -> None:
        if initial < 0 or window < 1:
            raise ValueError(
                f"DelayEstimator needs initial >= 0 and window >= 1, got {initial}, {window}"
            )
        self.initial = initial
        self._delays: deque[int] = deque(maxlen=window)

    def record(self, delay: int) -> None:
        self._delays.append(int(delay))

    @property
    def estimate(self) -> int:
        return max(self._delays) if self._delays else self.initial


def max_delay(s_min: int, H: int) -> int:
    """The largest d for which some s satisfies max(d, s_min) = s <= H - d."""
    return min(H - s_min, H // 2)


def choose_execution_horizon(d: int, s_min: int, H: int) -> int:
    """s = max(d, s_min); raises ValueError unless d <= s <= H - d (module docstring)."""
    s = max(d, s_min)
    if s_min < 1 or d < 0 or s > H - d:
        raise ValueError(
            f"no valid execution horizon for inference delay d={d}, minimum horizon "
            f"s_min={s_min} and chunk length H={H}: need 1 <= s_min and d <= s = max(d, s_min) "
            f"<= H - d, so d <= {max(max_delay(s_min, H), 0)} here; lower execution_horizon or "
            "initial_delay, use a policy with longer chunks, or speed up inference"
        )
    return s


@dataclass
class _Chunk:
    id: int
    actions: np.ndarray  # (H, A)
    start: int  # tick of actions[0]
    obs_tick: int
    measured: bool = False  # whether its delay was recorded


class _ChunkSource:
    """What every executor shares: chunk ids, shape checks and the delay measurement."""

    def __init__(self, chunk_length: int, initial_delay: int, delay_window: int) -> None:
        if chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
        self.H = chunk_length
        self.delays = DelayEstimator(initial_delay, delay_window)
        self._next_id = 0

    def make(self, actions: np.ndarray, start: int, obs_tick: int) -> _Chunk:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] != self.H:
            raise ValueError(
                f"chunk has shape {actions.shape}, expected ({self.H}, A): the executor was "
                f"built for chunk_length={self.H}; build it with the served policy's chunk_length"
            )
        chunk = _Chunk(self._next_id, actions, start, obs_tick)
        self._next_id += 1
        return chunk

    def consume(self, chunk: _Chunk, tick: int) -> None:
        """Record ``chunk``'s delay the first time one of its actions is consumed."""
        if not chunk.measured:
            chunk.measured = True
            self.delays.record(tick - chunk.obs_tick)


class SyncExecutor:
    """Request, hold until the chunk arrives, execute its first s actions, repeat."""

    name = "sync"
    sampling = EXECUTORS["sync"]
    blocking = True

    def __init__(
        self,
        chunk_length: int,
        execution_horizon: int | None = None,
        initial_delay: int = 0,
        delay_window: int = DELAY_WINDOW,
    ) -> None:
        if execution_horizon is None:
            execution_horizon = max(1, chunk_length // 2)  # half the chunk, whatever H is
        if not 1 <= execution_horizon <= chunk_length:
            raise ValueError(
                f"sync execution_horizon={execution_horizon} must lie in [1, H={chunk_length}]: "
                "lower it, or serve a policy with longer chunks"
            )
        self.s = execution_horizon
        self._source = _ChunkSource(chunk_length, initial_delay, delay_window)
        self._chunk: _Chunk | None = None

    @property
    def delay(self) -> int:
        return min(self._source.delays.estimate, self._source.H)

    def wants_request(self, tick: int) -> bool:
        return self._chunk is None or tick >= self._chunk.start + self.s

    def request_fields(self, tick: int) -> RequestFields:
        return RequestFields(None, self.delay, self.s)

    def on_chunk(self, actions: np.ndarray, obs_tick: int, arrival_tick: int) -> None:
        self._chunk = self._source.make(actions, start=arrival_tick, obs_tick=obs_tick)

    def action(self, tick: int) -> PlannedAction | None:
        chunk = self._chunk
        if chunk is None or not 0 <= tick - chunk.start < self.s:
            return None
        self._source.consume(chunk, tick)
        i = tick - chunk.start
        return PlannedAction(chunk.actions[i], chunk.id, i)

    def reset(self) -> None:
        self._chunk = None


class ChunkSwitchExecutor:
    """naive and the RTC executors: request every s ticks, switch to a new chunk at index d."""

    blocking = False

    def __init__(
        self,
        name: str,
        chunk_length: int,
        execution_horizon: int = 10,  # s_min: request after this many actions (s = max(d, s_min))
        initial_delay: int = 4,  # d, in ticks, before the first measurement
        delay_window: int = DELAY_WINDOW,
    ) -> None:
        if name not in ("naive", "rtc", "rtc_hard", "rtc_trained", "bid"):
            raise ValueError(f"ChunkSwitchExecutor serves naive, rtc* and bid, not {name!r}")
        choose_execution_horizon(initial_delay, execution_horizon, chunk_length)
        self.name = name
        self.sampling = EXECUTORS[name]
        self.s_min = execution_horizon
        self.send_prev_actions = name != "naive"
        self._source = _ChunkSource(chunk_length, initial_delay, delay_window)
        self._chunk: _Chunk | None = None
        self._clamped = False

    @property
    def delay(self) -> int:
        estimate, limit = self._source.delays.estimate, max_delay(self.s_min, self._source.H)
        if (estimate > limit) != self._clamped:
            self._clamped = estimate > limit
            if self._clamped:
                log.warning(
                    "measured inference delay %d ticks exceeds %d, the most a chunk of %d "
                    "actions can cover with execution_horizon >= %d: using d=%d, expect holds",
                    estimate,
                    limit,
                    self._source.H,
                    self.s_min,
                    limit,
                )
        return min(estimate, limit)

    def wants_request(self, tick: int) -> bool:
        d = self.delay
        return self._chunk is None or tick - self._chunk.start >= max(d, self.s_min)

    def request_fields(self, tick: int) -> RequestFields:
        d, H = self.delay, self._source.H
        chunk = self._chunk
        if chunk is None or tick - chunk.start >= H:  # nothing left to agree with
            return RequestFields(None, d, choose_execution_horizon(d, self.s_min, H))
        s = tick - chunk.start  # actions of the current chunk due before this observation
        prev = chunk.actions[s:].copy() if self.send_prev_actions else None  # (H - s, A)
        return RequestFields(prev, min(d, H - s), s)

    def on_chunk(self, actions: np.ndarray, obs_tick: int, arrival_tick: int) -> None:
        if arrival_tick - obs_tick >= self._source.H:
            log.warning(
                "chunk for tick %d arrived at tick %d, after all its %d actions were due",
                obs_tick,
                arrival_tick,
                self._source.H,
            )
        self._chunk = self._source.make(actions, start=obs_tick, obs_tick=obs_tick)

    def action(self, tick: int) -> PlannedAction | None:
        chunk = self._chunk
        if chunk is None:
            return None
        self._source.consume(chunk, tick)
        i = tick - chunk.start
        return PlannedAction(chunk.actions[i], chunk.id, i) if i < self._source.H else None

    def reset(self) -> None:
        self._chunk = None


class BidExecutor(ChunkSwitchExecutor):
    """Bidirectional Decoding: switches like naive; the server draws ``samples`` chunks and
    sends the one most coherent with the previous chunk (``runtime.serving.sampling``)."""

    def __init__(
        self,
        chunk_length: int,
        execution_horizon: int = 10,  # s_min: request after this many actions (s = max(d, s_min))
        initial_delay: int = 4,  # d, in ticks, before the first measurement
        delay_window: int = DELAY_WINDOW,
        samples: int = 16,  # N, chunks sampled per request (one batch on the server)
    ) -> None:
        if not 1 <= samples <= MAX_BID_SAMPLES:
            raise ValueError(f"bid samples={samples} must be in [1, {MAX_BID_SAMPLES}]")
        super().__init__("bid", chunk_length, execution_horizon, initial_delay, delay_window)
        self.sampling = f"bid:{samples}"


class TemporalEnsembleExecutor:
    """ACT's temporal ensembling: every tick, the weighted mean over all chunks covering it."""

    name = "ensemble"
    sampling = EXECUTORS["ensemble"]
    blocking = False

    def __init__(
        self,
        chunk_length: int,
        initial_delay: int = 0,
        delay_window: int = DELAY_WINDOW,
        coeff: float = 0.01,
    ) -> None:
        if coeff < 0:
            raise ValueError(f"ensemble coeff (m in exp(-m * i)) must be >= 0, got {coeff}")
        self.coeff = coeff  # m: weight exp(-m * i) for the i-th oldest chunk (ACT)
        self._source = _ChunkSource(chunk_length, initial_delay, delay_window)
        self._chunks: list[_Chunk] = []  # oldest first

    @property
    def delay(self) -> int:
        return min(self._source.delays.estimate, self._source.H)

    def wants_request(self, tick: int) -> bool:
        return True

    def request_fields(self, tick: int) -> RequestFields:
        d = self.delay
        return RequestFields(None, d, max(d, 1))  # the next request follows this reply

    def on_chunk(self, actions: np.ndarray, obs_tick: int, arrival_tick: int) -> None:
        self._chunks.append(self._source.make(actions, start=obs_tick, obs_tick=obs_tick))

    def action(self, tick: int) -> PlannedAction | None:
        self._chunks = [c for c in self._chunks if tick - c.start < self._source.H]
        if not self._chunks:
            return None
        for chunk in self._chunks:
            self._source.consume(chunk, tick)
        actions = np.stack([c.actions[tick - c.start] for c in self._chunks])  # (n, A)
        weights = np.exp(-self.coeff * np.arange(len(actions)))  # (n,), oldest first
        mean = (weights @ actions / weights.sum()).astype(np.float32)  # (A,)
        newest = self._chunks[-1]
        return PlannedAction(mean, newest.id, tick - newest.start)

    def reset(self) -> None:
        self._chunks = []


def _executor_class(name: str) -> tuple[type, tuple[str, ...]]:
    """The class building executor ``name`` and its constructor's non-setting arguments."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {list(EXECUTORS)}")
    if name == "sync":
        return SyncExecutor, ("chunk_length",)
    if name == "ensemble":
        return TemporalEnsembleExecutor, ("chunk_length",)
    if name == "bid":
        return BidExecutor, ("chunk_length",)
    return ChunkSwitchExecutor, ("name", "chunk_length")


def executor_settings(name: str) -> dict[str, object]:
    """Executor ``name``'s settings and their defaults, read from its constructor: the
    ``executor/`` config group is made from these, so a default is written only here."""
    cls, positional = _executor_class(name)
    return {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.name not in positional
    }


def make_executor(name: str, chunk_length: int, **params: float) -> Executor:
    """The executor ``name`` (one of EXECUTORS) for chunks of ``chunk_length`` actions.

    params are the executor's own settings (``executor_settings(name)``): sync takes
    execution_horizon (s; None: H // 2), initial_delay, delay_window; naive and rtc* the same,
    with execution_horizon the minimum s; bid those and samples; ensemble takes initial_delay,
    delay_window, coeff.
    """
    cls, positional = _executor_class(name)
    args = (name, chunk_length) if "name" in positional else (chunk_length,)
    try:
        return cls(*args, **params)
    except TypeError as err:
        raise ValueError(f"bad settings for executor {name!r} {params}: {err}") from None
