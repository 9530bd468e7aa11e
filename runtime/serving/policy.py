"""What a policy server serves, independent of transport and of the model behind it.

A ``ChunkPolicy`` (``runtime.wire.info``) turns observation requests into action chunks.
``FlowModel`` is the narrower interface a flow-matching model exposes so that one sampler
(``runtime.serving.sampling``) can run plain, guided (RTC) and prefix-conditioned
(training-time RTC) sampling for it: trained policies (``runtime.serving.loader``) and the
analytic synthetic policy (``runtime.serving.synthetic``) both implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from policies.flow import VelocityFn
from runtime.wire.protocol import ObservationRequest


@runtime_checkable
class FlowModel(Protocol):
    """A flow-matching action model seen from the sampler (tau = 0 noise, 1 data)."""

    # The synthetic model also reports a ``PolicyInfo`` (``info``); trained policies get theirs
    # from the loader (``runtime.serving.loader``), which passes it to the sampler.

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

    # Optional: ``action_offsets(requests) -> (B, A) array | None``. A model of actions
    # relative to the observed state (``policies.inference.FlowPolicy.action_offsets``)
    # normalizes and unnormalizes offsets; the sampler adds these to its chunks and takes
    # them off a previous chunk before guiding towards it.
