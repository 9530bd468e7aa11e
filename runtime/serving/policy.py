"""What a policy server serves, independent of transport and of the model behind it.

A ``ChunkPolicy`` turns observation requests into action chunks. ``FlowModel`` is the
narrower interface a flow-matching model exposes so that one sampler (``runtime.sampling``)
can run plain, guided (RTC) and prefix-conditioned (training-time RTC) sampling for it: the
VLA (``policies.vla``) and the analytic synthetic policy (``runtime.synthetic``) both
implement it. ``PolicyInfo`` lives in ``policies.inference`` (the VLA reports it too,
and ``policies`` does not import ``runtime``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from policies.flow import VelocityFn
from policies.inference import PolicyInfo
from runtime.protocol import ObservationRequest


class UnsupportedRequest(ValueError):
    """A well-formed request this policy cannot serve (e.g. an unknown executor).

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


@runtime_checkable
class FlowModel(Protocol):
    """A flow-matching action model seen from the sampler (tau = 0 noise, 1 data)."""

    @property
    def info(self) -> PolicyInfo: ...

    def velocity_fn(self, requests: Sequence[ObservationRequest]) -> VelocityFn:
        """Encode the observations once; return v(x (B, H, A), tau (B,) or (B, H)) in the
        model's normalized action space, differentiable w.r.t. x (RTC needs its VJP)."""
        ...

    def normalize_actions(self, actions: np.ndarray) -> Tensor:
        """Absolute actions (..., A) -> the model's normalized action space, float32 tensor."""
        ...

    def unnormalize_actions(self, actions: Tensor) -> np.ndarray:
        """Normalized (..., A) -> absolute float32 actions."""
        ...
