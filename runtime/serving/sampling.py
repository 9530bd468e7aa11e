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
                     ``policies.rtc.prefix_conditioned_sample``);
  bid:<N>            Bidirectional Decoding (Liu et al. 2024, arXiv 2408.17355) as the RTC
                     paper ran it: N plain samples per request in one batch; each scores a
                     backward coherence loss, its distance to the previous chunk under the
                     soft mask's weights, plus, when a weaker policy is given (``weak``, e.g.
                     an early checkpoint), the forward contrast: its distance to the K
                     samples of this policy that are most coherent, minus its distance to the
                     K most coherent of the weak policy's, over N. The lowest loss is sent.
                     Without a weak policy it is the backward term alone (rejection
                     sampling, the simplification the RTC paper's code allows).

The previous chunk travels as prev_actions (n, A): the previous chunk's actions for ticks
tick, tick + 1, ..., i.e. position i of the new chunk. A guided or prefix request with no
prev_actions (the first chunk of an episode) is sampled plainly. The delay d and execution
horizon s are checked (d <= s <= H - d) for those methods only: plain sampling does not use
them. Requests are grouped by sampling method and each group is sampled as one batch.
A ``bid:<N>`` request with no prev_actions has nothing to be coherent with: one plain sample.
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
from runtime.wire.protocol import (
    SAMPLING_METHODS,
    ObservationRequest,
    bid_samples,
    sampling_is_known,
)


class FlowChunkPolicy:
    """A ``ChunkPolicy`` sampling a ``FlowModel`` with each request's sampling method."""

    def __init__(
        self,
        model: FlowModel,
        num_steps: int = 10,
        beta: float = 5.0,
        info: PolicyInfo | None = None,
        weak: FlowModel | None = None,
        bid_k: int = 3,
    ) -> None:
        """weak: the weaker policy of BID's forward contrast (None: backward coherence only);
        bid_k: K, the most coherent samples of each policy the forward contrast compares to."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps}: Euler sampling needs at least one step")
        if bid_k < 1:
            raise ValueError(f"bid_k={bid_k}: the forward contrast needs at least one sample")
        if weak is not None and weak.info.action_dim != (info or model.info).action_dim:
            raise ValueError("the weak policy of BID must predict the same actions as the policy")
        self.model = model
        self.weak, self.bid_k = weak, bid_k
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
            group = [requests[i] for i in index]
            x = self._sample(sampler, group)  # (b, H, A) normalized
            absolute = self.model.unnormalize_actions(x)  # (b, H, A)
            offsets = self._offsets(group)
            if offsets is not None:  # a model of actions relative to the observed state
                absolute = absolute + offsets[:, None, :]
            for i, chunk in zip(index, absolute, strict=True):
                chunks[i] = np.ascontiguousarray(chunk, dtype=np.float32)
        return chunks

    def _sampler(self, r: ObservationRequest) -> str:
        """r's sampling method, after checking r's delay, horizon and prev_actions."""
        if not sampling_is_known(r.sampling):
            raise UnsupportedRequest(
                f"request {r.request_id}: sampling {r.sampling!r} is not served; known "
                f"methods: {list(SAMPLING_METHODS)} and bid:<N>"
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
        if bid_samples(sampler) is not None:
            return self._bid(bid_samples(sampler), batch)
        velocity = self.model.velocity_fn(batch)
        noise = self._noise(batch)  # (b, H, A)
        if sampler == "plain":
            with torch.no_grad():
                return euler_sample(velocity, noise, self.num_steps)
        prev = self._previous(batch).to(noise)  # (b, H, A)
        if sampler == "prefix":
            delay = torch.tensor([r.delay for r in batch], device=noise.device)
            return prefix_conditioned_sample(velocity, noise, prev, delay, self.num_steps)
        weights = self._weights(batch, sampler.removeprefix("guided:"))
        return guided_sample(velocity, noise, prev, weights, self.num_steps, self.beta)

    def _previous(self, batch: list[ObservationRequest]) -> Tensor:
        """The requests' previous chunks, normalized and aligned: (b, H, A), zero past each
        request's n rows."""
        H = self.info.chunk_length
        offsets = self._offsets(batch)
        return torch.stack([
            align_previous_chunk(self.model.normalize_actions(
                r.prev_actions if offsets is None else r.prev_actions - offsets[i]), H)
            for i, r in enumerate(batch)
        ])  # fmt: skip

    def _offsets(self, batch: list[ObservationRequest]) -> np.ndarray | None:
        """(b, A) the offsets of a model of relative actions (``action_offsets``), else None."""
        offsets = getattr(self.model, "action_offsets", None)
        return None if offsets is None else offsets(batch)

    def _weights(self, batch: list[ObservationRequest], schedule: str) -> np.ndarray:
        """(b, H) prefix weights of each request's d and s, 0 past its n rows."""
        H = self.info.chunk_length
        weights = np.zeros((len(batch), H))
        for row, r in zip(weights, batch, strict=True):
            n = len(r.prev_actions)
            row[:n] = prefix_weights(r.delay, r.execution_horizon, H, schedule)[:n]
        return weights

    def _bid(self, n: int, batch: list[ObservationRequest]) -> Tensor:
        """Bidirectional Decoding (module docstring): (b, H, A), the best of n samples each."""
        b, H, A = len(batch), self.info.chunk_length, self.info.action_dim
        repeated = [r for r in batch for _ in range(n)]  # request-major: row i * n + j
        noise = self._noise(batch, n)  # (b * n, H, A)
        with torch.no_grad():
            strong = euler_sample(self.model.velocity_fn(repeated), noise, self.num_steps)
            strong = strong.view(b, n, H, A)
            prev = self._previous(batch).to(strong)[:, None]  # (b, 1, H, A)
            w = torch.as_tensor(self._weights(batch, "exp"), dtype=strong.dtype)[:, None]

            def backward(x: Tensor) -> Tensor:  # (b, n, H, A) -> (b, n)
                return (torch.linalg.vector_norm(x - prev, dim=-1) * w.to(x)).sum(-1)

            loss = backward(strong)  # (b, n)
            if self.weak is not None:
                weak = euler_sample(self.weak.velocity_fn(repeated), noise, self.num_steps)
                weak = weak.view(b, n, H, A)
                k = min(self.bid_k, n)
                plus = _take(strong, backward(strong).topk(k, largest=False).indices)
                minus = _take(weak, backward(weak).topk(k, largest=False).indices)
                forward = _distance(strong, plus) - _distance(strong, minus)  # (b, n)
                loss = loss + forward / n
            best = loss.argmin(dim=1)  # (b,)
        return strong[torch.arange(b), best]

    def _noise(self, batch: list[ObservationRequest], n: int = 1) -> Tensor:
        """N(0, I) (b * n, H, A), n draws per request, each request's own: seeded requests
        are reproducible whatever else shares their batch (the first of n draws is the one
        n = 1 gives)."""
        shape = (n, self.info.chunk_length, self.info.action_dim)
        draws = [
            torch.randn(
                shape,
                generator=self._rng if r.seed is None else torch.Generator().manual_seed(r.seed),
            )
            for r in batch
        ]
        return torch.cat(draws).to(self._device)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """x (b, n, H, A) at index (b, k) along dim 1: (b, k, H, A)."""
    return x[torch.arange(x.shape[0])[:, None], index]


def _distance(x: Tensor, y: Tensor) -> Tensor:
    """Summed per-step distance of each x (b, n, H, A) to every y (b, k, H, A): (b, n)."""
    return torch.linalg.vector_norm(x[:, :, None] - y[:, None], dim=-1).sum(dim=(2, 3))
