"""What a client learns about a served policy, and the server's latency histogram.

Both ends of the wire use these: the server (or the in-process client) builds a
``MetadataReply`` from a ``PolicyInfo`` and its ``LatencyHistogram``; the controller reads
the chunk length, action dimension, rate and features from it before the first tick.
numpy only, like the rest of ``runtime.wire``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.wire.keys import ENV_STATE, HISTORY_SUFFIX
from runtime.wire.protocol import MetadataReply, ObservationRequest

GRIP_DIMS = 3  # what the simulator's task.grip_state adds to its scene state (grip.x/y/z)
LATENCY_EDGES_MS = np.logspace(-2, 5, 141)  # 0.01 ms to 100 s, 20 log-spaced bins a decade


@dataclass(frozen=True)
class PolicyInfo:
    """What a client needs to know about a served policy (sent in the metadata reply)."""

    model_id: str
    chunk_length: int  # H, actions per chunk
    action_dim: int  # A
    fps: float  # control rate the policy was trained at
    features: dict[str, dict] = field(default_factory=dict)  # key -> {"dtype", "shape"}
    sampling: tuple[str, ...] | None = None  # methods served; None: all (a flow model)
    # observation.state / action -> the joint names trained on (dataset feature names)
    joint_names: dict[str, tuple[str, ...]] | None = None
    # earlier ticks it reads, offsets < 0 oldest first (``MetadataReply.observation_history``)
    observation_history: tuple[int, ...] | None = None


class UnsupportedRequest(ValueError):
    """A well-formed request a policy cannot serve (e.g. a sampling method it lacks).

    Other ``ValueError``s from ``ChunkPolicy.infer`` mean the request itself is inconsistent;
    the server answers the first with error code "unsupported", the others with "bad_request".
    """


@runtime_checkable
class ChunkPolicy(Protocol):
    """Observations in, action chunks out; what ``PolicyServer`` serves."""

    @property
    def info(self) -> PolicyInfo: ...

    def infer(self, requests: Sequence[ObservationRequest]) -> list[np.ndarray]:
        """One float32 (H, A) chunk per request, in absolute action units, aligned to its tick.

        Raises ``UnsupportedRequest`` or ``ValueError`` (with a message saying what to change)
        when a request cannot be served; the server then retries the others one by one.
        """
        ...


class LatencyHistogram:
    """Inference latencies in fixed log-spaced bins (values outside go to the end bins)."""

    def __init__(self, edges_ms: np.ndarray = LATENCY_EDGES_MS) -> None:
        self.edges_ms = np.asarray(edges_ms, dtype=np.float64)  # (K + 1,)
        self.counts = np.zeros(len(self.edges_ms) - 1, dtype=np.int64)  # (K,)

    def add(self, ms: float) -> None:
        k = np.searchsorted(self.edges_ms, ms, side="right") - 1
        self.counts[min(max(k, 0), len(self.counts) - 1)] += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated log-linearly inside its bin (exact to a bin's width,
        12 %); None while empty."""
        total = int(self.counts.sum())
        if total == 0:
            return None
        cumulative = np.cumsum(self.counts)
        k = int(np.searchsorted(cumulative, q * total))
        k = min(k, len(self.counts) - 1)
        below = cumulative[k] - self.counts[k]
        fraction = (q * total - below) / self.counts[k]
        lo, hi = np.log(self.edges_ms[k]), np.log(self.edges_ms[k + 1])
        return float(np.exp(lo + fraction * (hi - lo)))


def metadata_reply(
    request_id: int,
    info: PolicyInfo,
    histogram: LatencyHistogram,
    uptime_s: float,
    requests_served: int,
) -> MetadataReply:
    """The health/metadata reply of a served policy (server and in-process client alike)."""
    return MetadataReply(
        request_id=request_id,
        model_id=info.model_id,
        features={
            k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in info.features.items()
        },
        chunk_length=info.chunk_length,
        action_dim=info.action_dim,
        fps=info.fps,
        latency_edges_ms=histogram.edges_ms,
        latency_counts=histogram.counts.copy(),
        uptime_s=uptime_s,
        requests_served=requests_served,
        sampling=info.sampling,
        joint_names=info.joint_names,
        observation_history=info.observation_history,
    )


def fit_problems(
    features: dict[str, dict],
    fps: float,
    action_dim: int,
    driver_spec: dict[str, dict],
    hz: float,
    joint_names: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """What keeps a policy (its observation ``features``, training ``fps``, ``action_dim`` and
    ``joint_names``, as a ``MetadataReply`` carries them) from driving a robot (its driver's
    ``feature_spec()``, lerobot-style, at a control rate of ``hz``); each item says what differs
    and what to change. Empty when they fit. A driver's "image" and "video" features arrive as
    uint8 arrays. Joint names are compared where both sides give them: they carry the order
    and, by lerobot's convention (``shoulder_pan.pos``: degrees), the units."""
    problems = []
    for key, want in sorted((joint_names or {}).items()):
        have = driver_spec.get(key, {}).get("names")
        if have is not None and tuple(have) != tuple(want):
            problems.append(
                f"the policy's {key} joints are {list(want)}, the driver's {list(have)}: order "
                "and units must match. A checkpoint trained on sim data recorded before the sim "
                "spoke SO-101 follower units converts with `rtvla export checkpoint=OLD "
                "output=NEW units=follower`; otherwise serve a policy trained for this robot"
            )
    for key, spec in sorted(features.items()):
        want_shape, want_dtype = tuple(spec["shape"]), spec["dtype"]
        if key.endswith(HISTORY_SUFFIX):  # the controller stacks it from the driver's key
            key, want_shape = key.removesuffix(HISTORY_SUFFIX), want_shape[1:]
        if key not in driver_spec:
            have = sorted(k for k in driver_spec if k.startswith("observation."))
            hint = (
                "add that camera to the driver (task.cameras)"
                if "images" in key
                else ("give the driver that feature")
            )
            problems.append(
                f"the policy reads {key} {want_shape} {want_dtype}, which the driver does not "
                f"provide (it has {have}): {hint}, or serve a policy trained on these features"
            )
            continue
        have_shape = tuple(driver_spec[key]["shape"])
        have_dtype = driver_spec[key]["dtype"]
        have_dtype = "uint8" if have_dtype in ("image", "video") else have_dtype
        if have_shape != want_shape or have_dtype != want_dtype:
            if "images" in key and len(want_shape) == 3 and want_shape[0] == want_shape[1]:
                hint = f"set task.image_size={want_shape[0]}"
            elif key == ENV_STATE and len(want_shape) == len(have_shape) == 1 and abs(
                want_shape[0] - have_shape[0]) == GRIP_DIMS:  # fmt: skip
                wanted = want_shape[0] > have_shape[0]
                hint = (
                    f"the policy was trained {'with' if wanted else 'without'} the simulator's "
                    f"grip site (grip.x/y/z): set task.grip_state={str(wanted).lower()}"
                )
            else:
                hint = "configure the driver to match"
            problems.append(
                f"{key} is {have_shape} {have_dtype} from the driver, the policy expects "
                f"{want_shape} {want_dtype}: {hint}, or serve a policy trained for this robot"
            )
    actions = driver_spec.get("action", {}).get("shape")
    if actions is not None and tuple(actions) != (action_dim,):
        problems.append(
            f"the policy predicts {action_dim} actions, the driver takes {tuple(actions)}: "
            "serve a policy trained for this robot"
        )
    if abs(fps - hz) > 1e-6 * max(fps, hz):
        problems.append(
            f"the policy was trained at {fps:g} fps, the control loop runs at {hz:g} Hz: set "
            f"hz={fps:g} (a task's control_hz), or serve a policy trained at {hz:g} fps"
        )
    return problems
