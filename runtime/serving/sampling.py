"""Serving a flow model: the sampling method each request names, batched across robots.

``FlowChunkPolicy`` turns any ``FlowModel`` into a ``ChunkPolicy``. Each request names its
sampling method (``runtime.wire.protocol.SAMPLING_METHODS``; the robot side's executor table
``runtime.robot.executors.EXECUTORS`` says which executor asks for which):

  plain              Euler sampling (``policies.flow.euler_sample``);
  guided:<schedule>  inference-time RTC, ΠGDM-guided sampling towards the previous chunk
                     under ``prefix_weights(schedule)``: ``exp`` is the paper's soft mask,
                     ``zeros`` the hard mask (Black, Galliker, Levine 2025, arXiv 2506.07339,
                     Alg. 1 and eq. 5: ``policies.rtc.guided_sample``);
  prefix             training-time RTC, the first d actions held clean at tau = 1
                     (Black, Ren, Equi, Levine 2025, arXiv 2512.05964:
                     ``policies.rtc.prefix_conditioned_sample``).

The previous chunk travels as prev_actions (n, A): the previous chunk's actions for ticks
tick, tick + 1, ..., i.e. position i of the new chunk. A guided or prefix request with no
prev_actions (the first chunk of an episode) is sampled plainly. The delay d and execution
horizon s are checked (d <= s <= H - d) for those methods only: plain sampling does not use
them. Requests are grouped by sampling method and each group is sampled as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from policies.flow import euler_sample
from policies.rtc import (
    align_previous_chunk,
    guided_sample,
    prefix_conditioned_sample,
    prefix_weights,
)
from runtime.serving.policy import FlowModel
from runtime.wire.info import PolicyInfo, UnsupportedRequest
from runtime.wire.protocol import SAMPLING_METHODS, ObservationRequest


class FlowChunkPolicy:
    """A ``ChunkPolicy`` sampling a ``FlowModel`` with each request's sampling method."""

    def __init__(
        self,
        model: FlowModel,
        num_steps: int = 10,
        beta: float = 5.0,
        info: PolicyInfo | None = None,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps}: Euler sampling needs at least one step")
        self.model = model
        self._info = model.info if info is None else info  # what clients are told
        self.num_steps = num_steps  # Euler steps from noise to data
        self.beta = beta  # guidance weight clip (RTC paper, eq. 4)
        self._rng = torch.Generator()  # for requests without a seed
        self._rng.seed()
        # The model's device, as its own normalization reports it.
        probe = np.zeros((1, self._info.action_dim), np.float32)
        self._device = model.normalize_actions(probe).device

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def infer(self, requests: Sequence[ObservationRequest]) -> list[np.ndarray]:
        """One absolute float32 (H, A) chunk per request; checks every request first."""
        samplers = [self._sampler(r) for r in requests]
        chunks: list[np.ndarray] = [np.empty(0, np.float32)] * len(requests)
        for sampler in dict.fromkeys(samplers):
            index = [i for i, s in enumerate(samplers) if s == sampler]
            x = self._sample(sampler, [requests[i] for i in index])  # (b, H, A) normalized
            absolute = self.model.unnormalize_actions(x)  # (b, H, A)
            for i, chunk in zip(index, absolute, strict=True):
                chunks[i] = np.ascontiguousarray(chunk, dtype=np.float32)
        return chunks

    def _sampler(self, r: ObservationRequest) -> str:
        """r's sampling method, after checking r's delay, horizon and prev_actions."""
        if r.sampling not in SAMPLING_METHODS:
            raise UnsupportedRequest(
                f"request {r.request_id}: sampling {r.sampling!r} is not served; known "
                f"methods: {list(SAMPLING_METHODS)}"
            )
        H, A = self.info.chunk_length, self.info.action_dim
        n = 0 if r.prev_actions is None else len(r.prev_actions)
        if r.prev_actions is not None and (n > H or r.prev_actions.shape[1] != A):
            raise ValueError(
                f"request {r.request_id}: prev_actions has shape {r.prev_actions.shape}, expected "
                f"(n, {A}) with n <= H = {H}: send the previous chunk's actions for ticks "
                f"{r.tick}, {r.tick + 1}, ... (at most H of them)"
            )
        sampler = r.sampling
        if sampler == "plain":
            return sampler
        d, s = r.delay, r.execution_horizon
        if not d <= s <= H - d:
            raise ValueError(
                f"request {r.request_id}: RTC needs delay d <= execution_horizon s <= H - d, got "
                f"d={d}, s={s}, H={H}: the delay cannot exceed the execution horizon, and the "
                "d frozen actions must still be left in the previous chunk"
            )
        if n == 0:
            return "plain"  # the first chunk: nothing to agree with yet
        if n < d:
            raise ValueError(
                f"request {r.request_id}: prev_actions holds {n} actions but the delay is "
                f"d={d}: send at least the d actions that execute while this chunk is computed"
            )
        return sampler

    def _sample(self, sampler: str, batch: list[ObservationRequest]) -> Tensor:
        """A normalized chunk batch (b, H, A) drawn with one sampler."""
        velocity = self.model.velocity_fn(batch)
        noise = self._noise(batch)  # (b, H, A)
        if sampler == "plain":
            with torch.no_grad():
                return euler_sample(velocity, noise, self.num_steps)
        H = self.info.chunk_length
        prev = torch.stack(
            [align_previous_chunk(self.model.normalize_actions(r.prev_actions), H) for r in batch]
        ).to(noise)  # (b, H, A), zero past each request's n rows
        if sampler == "prefix":
            delay = torch.tensor([r.delay for r in batch], device=noise.device)
            return prefix_conditioned_sample(velocity, noise, prev, delay, self.num_steps)
        schedule = sampler.removeprefix("guided:")
        weights = np.zeros((len(batch), H))  # (b, H), 0 past each request's n rows
        for row, r in zip(weights, batch, strict=True):
            n = len(r.prev_actions)
            row[:n] = prefix_weights(r.delay, r.execution_horizon, H, schedule)[:n]
        return guided_sample(velocity, noise, prev, weights, self.num_steps, self.beta)

    def _noise(self, batch: list[ObservationRequest]) -> Tensor:
        """N(0, I) (b, H, A), each request's own draw: seeded requests are reproducible
        whatever else shares their batch."""
        shape = (self.info.chunk_length, self.info.action_dim)
        draws = [
            torch.randn(
                shape,
                generator=self._rng if r.seed is None else torch.Generator().manual_seed(r.seed),
            )
            for r in batch
        ]
        return torch.stack(draws).to(self._device)
