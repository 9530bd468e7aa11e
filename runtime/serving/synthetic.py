"""An analytic flow model: Gaussian action chunks with their exact flow velocity.

For tests, benchmarks and demos with no trained weights. Given an observation, a chunk is

    a = mu(obs) + B z + sigma_floor * e,    z ~ N(0, sigma^2 I_k), e ~ N(0, I_H)

independently per action dimension (in the normalized space), with B (H, k) the first k
orthonormal DCT-II vectors over time (smooth, low-frequency) and mu(obs) a smooth
trajectory from the observed state towards a goal that moves slowly with the tick. So a
chunk is smooth, successive chunks start where the robot is, but two samples disagree by a
smooth offset: naive asynchronous execution jumps at every seam and RTC has something to fix.
The floor sigma_floor keeps the covariance Sigma = sigma^2 B B^T + sigma_floor^2 I full rank,
so the velocity stays finite at tau = 1 (a clean prefix in training-time RTC).

Exact velocity on the project's linear path (``policies/flow.py``: tau = 0 noise, tau = 1
data, x = T a + (I - T) eps with T = diag(tau_1..tau_H), per-token flow time allowed):
x and a - eps are jointly Gaussian, so

    v(x, T) = E[a - eps | x] = mu + C M^{-1} (x - T mu),
    M = T Sigma T + (I - T)^2 = Cov(x),    C = Sigma T - (I - T) = Cov(a - eps, x).

With a per-example tau (T = tau I) this is the familiar mu + (tau Sigma - (1 - tau) I)
Var^{-1} (x - tau mu), diagonal in Sigma's eigenbasis (eigenvalues lambda): each coordinate
is scaled by (tau lambda - (1 - tau)) / (tau^2 lambda + (1 - tau)^2). A per-token tau (B, H)
is exact too, no per-token approximation: one H x H inverse per distinct row of tau (all
rows alike when a batch shares its delay), so a clean prefix at tau = 1 yields exact
conditional samples a | prefix. Both run in float64 and are differentiable in x; the Jacobian
C M^{-1} couples the time steps (it is not a multiple of I), so RTC guidance's
vector-Jacobian product matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from policies.flow import VelocityFn
from runtime.wire.info import PolicyInfo
from runtime.wire.keys import STATE
from runtime.wire.protocol import ObservationRequest


def dct_basis(H: int, k: int) -> np.ndarray:
    """The first k orthonormal DCT-II vectors over H time steps, (H, k) float64."""
    if not 1 <= k <= H:
        raise ValueError(f"dct_basis needs 1 <= k <= H, got k={k}, H={H}")
    i = np.arange(H)[:, None] + 0.5
    m = np.arange(k)[None, :]
    basis = np.cos(np.pi * i * m / H) * np.sqrt(2.0 / H)  # (H, k)
    basis[:, 0] /= np.sqrt(2.0)
    return basis


class GaussianChunkModel:
    """A ``FlowModel`` whose chunk distribution is Gaussian and whose velocity is exact.

    Normalization is the fixed affine map normalized = (absolute - action_offset) /
    action_scale, applied to observation.state too (state and actions are joint positions).
    """

    def __init__(
        self,
        chunk_length: int = 50,  # H
        action_dim: int = 6,  # A, also the size of observation.state
        fps: float = 30.0,  # control rate; sets the time scale of mu
        num_basis: int = 4,  # k, smooth DCT directions the samples vary along
        sigma: float = 0.5,  # std of each basis coefficient (normalized units)
        sigma_floor: float = 0.02,  # std of the white noise on top (keeps Sigma full rank)
        time_constant_s: float = 0.5,  # mu approaches the goal as 1 - exp(-t / time_constant_s)
        goal_period_s: float = 4.0,  # the goal moves on a sine of this period
        goal_amplitude: float = 1.0,  # and this amplitude (normalized units)
        # absolute = action_offset + action_scale * normalized, in the robot's units: degrees
        # (and 0-100 for the gripper) on the sim and an SO-101 follower
        action_offset: float = 15.0,
        action_scale: float = 30.0,
    ) -> None:
        if sigma < 0 or sigma_floor <= 0:
            raise ValueError(
                f"need sigma >= 0 and sigma_floor > 0, got sigma={sigma}, "
                f"sigma_floor={sigma_floor}: the floor keeps the velocity finite at tau = 1"
            )
        if action_scale <= 0:
            raise ValueError(f"action_scale must be > 0, got {action_scale}")
        self._info = PolicyInfo(
            model_id="synthetic-gaussian",
            chunk_length=chunk_length,
            action_dim=action_dim,
            fps=fps,
            features={STATE: {"dtype": "float32", "shape": (action_dim,)}},
        )
        self.basis = dct_basis(chunk_length, num_basis)  # (H, k)
        cov = sigma**2 * self.basis @ self.basis.T + sigma_floor**2 * np.eye(chunk_length)
        self.covariance = torch.from_numpy(cov)  # Sigma (H, H) float64, per action dimension
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        self._eigenvalues = torch.from_numpy(eigenvalues)  # (H,)
        self._eigenvectors = torch.from_numpy(eigenvectors)  # (H, H), columns
        self.time_constant_s = time_constant_s
        self.goal_period_s = goal_period_s
        self.goal_amplitude = goal_amplitude
        self.action_offset = action_offset
        self.action_scale = action_scale

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def mean(self, requests: Sequence[ObservationRequest]) -> Tensor:
        """mu(obs) (B, H, A) float64 in the normalized space: from the state towards the goal."""
        H, A, fps = self.info.chunk_length, self.info.action_dim, self.info.fps
        state = np.stack([self._state(r) for r in requests])  # (B, A)
        start = (state - self.action_offset) / self.action_scale  # (B, A)
        ticks = np.array([r.tick for r in requests], dtype=np.float64)[:, None] + np.arange(H)
        phase = 2 * np.pi * ticks[..., None] / (self.goal_period_s * fps)  # (B, H, 1)
        goal = self.goal_amplitude * np.sin(phase + np.arange(A) * np.pi / A)  # (B, H, A)
        approach = -np.expm1(-(np.arange(H) + 1) / (fps * self.time_constant_s))  # (H,)
        mu = start[:, None, :] + approach[None, :, None] * (goal - start[:, None, :])
        return torch.from_numpy(mu)

    def velocity_fn(self, requests: Sequence[ObservationRequest]) -> VelocityFn:
        """The exact v(x (B, H, A), tau (B,) or (B, H)) for these observations (module doc)."""
        mu = self.mean(requests)  # (B, H, A)
        sigma, lam, U = self.covariance, self._eigenvalues, self._eigenvectors
        eye = torch.eye(len(sigma), dtype=torch.float64)

        def velocity(x: Tensor, tau: Tensor) -> Tensor:
            if x.shape != mu.shape or tau.shape not in (x.shape[:1], x.shape[:2]):
                raise ValueError(
                    f"x {tuple(x.shape)} and tau {tuple(tau.shape)}: expected x "
                    f"{tuple(mu.shape)} and tau ({len(mu)},) or {tuple(mu.shape[:2])}"
                )
            t = tau.to(torch.float64)
            if t.ndim == 1:
                t = t[:, None]  # (B, 1)
                y = x.to(torch.float64) - t[..., None] * mu  # (B, H, A)
                scale = (t * lam - (1 - t)) / (t**2 * lam + (1 - t) ** 2)  # (B, H) eigen
                return (mu + U @ (scale[..., None] * (U.T @ y))).to(x.dtype)
            y = x.to(torch.float64) - t[..., None] * mu  # (B, H, A)
            rows, which = torch.unique(t, dim=0, return_inverse=True)  # one solve per distinct tau
            cov_x = rows[:, :, None] * sigma * rows[:, None, :] + torch.diag_embed((1 - rows) ** 2)
            cross = sigma * rows[:, None, :] - eye * (1 - rows)[:, None, :]  # (R, H, H)
            gain = cross @ torch.linalg.inv(cov_x)  # (R, H, H)
            return (mu + gain[which] @ y).to(x.dtype)

        return velocity

    def normalize_actions(self, actions: np.ndarray) -> Tensor:
        normalized = (
            np.asarray(actions, dtype=np.float32) - self.action_offset
        ) / self.action_scale
        return torch.from_numpy(normalized.astype(np.float32))

    def unnormalize_actions(self, actions: Tensor) -> np.ndarray:
        absolute = actions.detach().cpu().numpy() * self.action_scale + self.action_offset
        return absolute.astype(np.float32)

    def _state(self, request: ObservationRequest) -> np.ndarray:
        state = request.observation.get(STATE)
        expected = (self.info.action_dim,)
        if state is None or state.shape != expected:
            got = "nothing" if state is None else f"shape {state.shape}"
            raise ValueError(
                f"request {request.request_id}: {STATE} is {got}, the synthetic model "
                f"expects float32 {expected} (joint positions)"
            )
        return state.astype(np.float64)
