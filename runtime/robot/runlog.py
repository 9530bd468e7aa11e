"""The run log: what a controller run did, one row per tick and one per request.

``RunRecorder`` collects the rows during a run; ``RunLog`` holds them as numpy columns, saves
and loads them as ``.npz`` (no pickle) and summarises them (delays, jitter, latency, stalls).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.robot.executors import PlannedAction
from runtime.wire.protocol import ChunkReply, ObservationRequest

STALL_REASONS = ("starved", "watchdog")  # holds that the executor did not plan


@dataclass(frozen=True)
class RunLog:
    """What happened in a run: one row per tick and one per request, as numpy columns.

    ticks: tick, wall_s (since the run started), action (T, A) float32 (the planned action
    before clamping; NaN on a hold), chunk and index (-1 on a hold), delay (the estimate d),
    planned, hold_reason ('' when planned), in_flight, lateness_ms, instruction (as sent)
    instruction_source (who chose it: 'task', 'high_level' or 'operator') and correction (the
    high level's smoothed correction probability; NaN without one). Runs with injected
    failures add ``injected`` (``controller.with_injected_failures``), simulator runs
    ``observation.state`` (T, S), the joint state at the start of each tick
    (``controller.with_sim_states``).
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
        correction: float | None = None,
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
            correction=np.nan if correction is None else correction,
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
    "correction": np.float64,
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
