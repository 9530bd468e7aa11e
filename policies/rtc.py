"""Real-time chunking (RTC): all of its math, independent of transport.

While a new action chunk is computed, the robot keeps executing the previous one. Two ways
make the new chunk agree with the actions that will still run from the previous one:

* Inference-time RTC -- Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking
  Flow Policies" (arXiv 2506.07339): inpainting with ΠGDM guidance (eqs. 1-4) under a soft
  mask over the overlap (eq. 5). It needs a vector-Jacobian product *through the velocity
  network* at every denoising step (`guided_sample`).
* Training-time RTC -- Black, Ren, Equi, Levine 2025, "Training-Time Action Conditioning for
  Efficient Real-Time Chunking" (arXiv 2512.05964): the model is trained with a clean action
  prefix (per-token flow time tau = 1 on the prefix, loss on the postfix only,
  `prefix_flow_time`); at inference the prefix is overwritten at every step and nothing is
  differentiated (`prefix_conditioned_sample`).

Time convention (the project's, fixed in `policies/flow.py`): tau = 0 is noise, tau = 1 is
data, x_tau = tau * a + (1 - tau) * eps, Euler from tau = 0 to 1. The RTC paper integrates in
the same direction (A^0 ~ N(0, I) to A^1, its eq. 1, with A1_hat = A^tau + (1 - tau) v), so
its formulas are used as written here; openpi's code and lerobot's port run time the other
way, which flips the sign of the correction there.

Indexing: a chunk holds H actions. A request is made after s actions of the previous chunk
were executed (s = execution horizon); its H - s unexecuted actions line up with positions
0 .. H - s - 1 of the new chunk, which is aligned to the same observation tick, and the first
d of them (d = inference delay) execute while the new chunk is being computed.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from policies.flow import VelocityFn, euler_sample

SCHEDULES = ("exp", "linear", "ones", "zeros")


def prefix_weights(d: int, s: int, H: int, schedule: str = "exp") -> np.ndarray:
    """Guidance weights W (H,) over the new chunk's positions, RTC paper eq. 5.

    Schedules (c_i = (H - s - i) / (H - s - d + 1)):
      exp     the paper's soft mask: 1 for i < d; c_i (e^{c_i} - 1) / (e - 1) for
              d <= i < H - s; 0 for i >= H - s.
      linear  as exp with c_i itself on d <= i < H - s.
      ones    1 over the whole overlap i < H - s, 0 after (the paper's ablation that guides
              towards the whole remainder of the previous chunk).
      zeros   hard mask: 1 for i < d, 0 after (only the frozen prefix is guided).

    Raises ValueError unless 0 <= d <= s <= H - d and H >= 1.
    """
    for name, value in (("d", d), ("s", s), ("H", H)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise ValueError(f"prefix_weights: {name} must be an int, got {value!r}")
    if H < 1 or not 0 <= d <= s <= H - d:
        raise ValueError(
            f"prefix_weights needs H >= 1 and 0 <= d <= s <= H - d, got d={d}, s={s}, H={H}: "
            "the inference delay d cannot exceed the execution horizon s, and the d frozen "
            "actions must still be unexecuted in the previous chunk (d <= H - s)"
        )
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown prefix schedule {schedule!r}; valid schedules: {SCHEDULES}")
    i = np.arange(H, dtype=np.float64)
    overlap = H - s
    if schedule == "zeros":
        return (i < d).astype(np.float64)
    if schedule == "ones":
        return (i < overlap).astype(np.float64)
    c = (overlap - i) / (overlap - d + 1)  # in (0, 1) on d <= i < H - s
    decay = c if schedule == "linear" else c * np.expm1(c) / (np.e - 1)
    return np.where(i < d, 1.0, np.where(i < overlap, decay, 0.0))


def guidance_weight(tau: float, beta: float = 5.0) -> float:
    """ΠGDM guidance weight, RTC paper eqs. 2 and 4, clipped at beta.

    min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2), i.e. (1 - tau) /
    (tau r_tau^2) with r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2). It simplifies to
    (tau^2 + (1 - tau)^2) / (tau (1 - tau)), which is evaluated here: it is at least 2
    (at tau = 1/2) and grows without bound at both ends, so tau = 0 and tau = 1 give beta.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"guidance_weight: flow time tau must lie in [0, 1], got {tau}")
    if beta < 0.0:
        raise ValueError(f"guidance_weight: beta must be >= 0, got {beta}")
    denominator = tau * (1.0 - tau)
    if denominator == 0.0:
        return float(beta)
    return float(min(beta, (tau**2 + (1.0 - tau) ** 2) / denominator))


def align_previous_chunk(prev_unexecuted: Tensor, H: int) -> Tensor:
    """Pad the previous chunk's unexecuted actions (..., n, D) with zeros to (..., H, D).

    Position i of the result is position i of the new chunk. Padded positions carry no
    information: their guidance weight must be 0.
    """
    n = prev_unexecuted.shape[-2]
    if n > H:
        raise ValueError(
            f"the previous chunk has {n} unexecuted actions but the new chunk holds only "
            f"H={H}: send at most H actions (the ones not yet executed)"
        )
    pad = prev_unexecuted.new_zeros((*prev_unexecuted.shape[:-2], H - n, prev_unexecuted.shape[-1]))
    return torch.cat([prev_unexecuted, pad], dim=-2)


def guided_velocity(
    velocity_fn: VelocityFn,
    x: Tensor,
    tau: float,
    target: Tensor,
    weights: Tensor,
    beta: float = 5.0,
) -> Tensor:
    """One ΠGDM-guided velocity, RTC paper eqs. 1-3 (Algorithm 1, GuidedInference).

    x (B, H, D) at flow time tau; target Y (B, H, D), the aligned previous chunk; weights W
    (H,) or (B, H). With v = velocity_fn(x, tau (B,)) and A1_hat = x + (1 - tau) v, returns
    v + guidance_weight(tau, beta) * (Y - A1_hat)^T diag(W) dA1_hat/dx, where the
    vector-Jacobian product runs through the network (dA1_hat/dx = I + (1 - tau) dv/dx).
    The result is detached.
    """
    tau_b = x.new_full((x.shape[0],), tau)  # (B,)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        v = velocity_fn(x_in, tau_b)  # (B, H, D)
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x {tuple(x.shape)}")
        if not v.requires_grad:
            raise RuntimeError(
                "velocity_fn returned a tensor with no gradient path to x, so guidance would "
                "skip the network's Jacobian: do not run it under torch.no_grad() or detach "
                "its output"
            )
        a1_hat = x_in + (1.0 - tau) * v  # (B, H, D)
        error = weights.unsqueeze(-1) * (target - a1_hat.detach())  # W (Y - A1_hat)
        (correction,) = torch.autograd.grad(a1_hat, x_in, grad_outputs=error)
    return v.detach() + guidance_weight(tau, beta) * correction


def guided_sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    prev_chunk: Tensor,
    weights: np.ndarray | Tensor,
    num_steps: int = 10,
    beta: float = 5.0,
) -> Tensor:
    """Inference-time RTC: Euler from tau = 0 to 1 with ΠGDM guidance (RTC paper, Alg. 1).

    noise (B, H, D); prev_chunk (n, D) or (B, n, D) with n <= H, the previous chunk's
    unexecuted actions (zero-padded to H, see `align_previous_chunk`); weights (H,) or
    (B, H) from `prefix_weights`, 0 wherever the previous chunk was padded. velocity_fn must
    be differentiable in x. Returns the detached chunk (B, H, D).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "guided_sample differentiates through the velocity network: call it outside "
            "torch.inference_mode() (torch.no_grad() is fine)"
        )
    B, H, D = _chunk_shape(noise)
    prev = _batched_prefix(prev_chunk, B, D)  # (B, n, D)
    n = prev.shape[1]
    target = align_previous_chunk(prev, H).to(noise)  # (B, H, D)
    w = torch.as_tensor(weights).to(noise)
    if w.shape not in ((H,), (B, H)):
        raise ValueError(f"weights must have shape ({H},) or ({B}, {H}), got {tuple(w.shape)}")
    if bool((w[..., n:] != 0).any()):
        raise ValueError(
            f"weights are nonzero past the previous chunk's {n} unexecuted actions: build them "
            f"with prefix_weights(d, s, H) with s = H - n = {H - n}"
        )
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: Euler sampling needs at least one step")
    dt = 1.0 / num_steps
    x = noise.detach()
    for k in range(num_steps):
        x = x + dt * guided_velocity(velocity_fn, x, k * dt, target, w, beta)
    return x


@torch.no_grad()
def prefix_conditioned_sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    prev_chunk: Tensor,
    d: int | Sequence[int] | Tensor,
    num_steps: int = 10,
) -> Tensor:
    """Training-time RTC inference (Black et al. 2025, arXiv 2512.05964): no backward pass.

    noise (B, H, D); prev_chunk (n, D) or (B, n, D), the previous chunk's unexecuted actions;
    d (int or (B,)) the inference delay, d <= n. Positions i < d hold the clean prefix at flow
    time tau = 1 and are overwritten after every step; the others integrate from tau = 0.
    velocity_fn receives the per-token tau (B, H). Returns the chunk (B, H, D). The Euler
    loop itself is `policies.flow.euler_sample` with a prefix mask.
    """
    B, H, D = _chunk_shape(noise)
    prev = _batched_prefix(prev_chunk, B, D)  # (B, n, D)
    n = prev.shape[1]
    target = align_previous_chunk(prev, H).to(noise)  # (B, H, D)
    delay = torch.as_tensor(d, device=noise.device)
    if delay.shape not in ((), (B,)):
        raise ValueError(f"d must be an int or have shape ({B},), got {tuple(delay.shape)}")
    delay = delay.expand(B)  # (B,)
    if bool(((delay < 0) | (delay > n)).any()):
        raise ValueError(
            f"inference delay d={delay.tolist()} must lie in [0, {n}], the number of the "
            "previous chunk's unexecuted actions"
        )
    frozen = torch.arange(H, device=noise.device) < delay[:, None]  # (B, H)
    return euler_sample(velocity_fn, noise, num_steps, prefix=target, prefix_mask=frozen)


def check_training_delay(max_delay: int, zero_prob: float | None, H: int) -> None:
    """Raises ValueError unless 0 <= max_delay < H and zero_prob is None or in [0, 1]: the
    training-time RTC settings (``rtc_training_max_delay``, ``rtc_training_zero_prob``) of
    every policy kind that has them."""
    if not 0 <= max_delay < H:
        raise ValueError(f"rtc_training_max_delay={max_delay} must be in [0, chunk_length={H})")
    if zero_prob is not None and not 0.0 <= zero_prob <= 1.0:
        raise ValueError(f"rtc_training_zero_prob={zero_prob} must be in [0, 1] (or null)")


def sample_training_delay(
    B: int, max_delay: int, zero_prob: float | None, device: torch.device | str | None = None
) -> Tensor:
    """Simulated inference delays (B,) for training-time RTC: d ~ U{0..max_delay} when
    ``zero_prob`` is None; else d = 0 (no prefix: the synchronous case) with probability
    ``zero_prob`` and d ~ U{1..max_delay} otherwise. Raising the share of d = 0 keeps the
    policy able to act from the observation alone (the first chunk of an episode, and every
    chunk of synchronous execution) instead of leaning on the prefix it is mostly given."""
    if zero_prob is None:
        return torch.randint(0, max_delay + 1, (B,), device=device)
    delay = torch.randint(1, max_delay + 1, (B,), device=device)
    return torch.where(torch.rand(B, device=device) < zero_prob, 0, delay)


def prefix_flow_time(tau: Tensor, delay: Tensor, H: int) -> tuple[Tensor, Tensor]:
    """Per-token flow time for training-time RTC (Black et al. 2025, arXiv 2512.05964).

    tau (B,) the sampled flow time, delay (B,) the simulated inference delay per example.
    Returns tau_tokens (B, H), equal to 1 (clean data) on the prefix i < delay and to tau
    elsewhere, and postfix_mask (B, H), True where i >= delay: the flow-matching loss is
    averaged over the postfix only.
    """
    postfix_mask = torch.arange(H, device=tau.device) >= delay[:, None]  # (B, H)
    tau_tokens = torch.where(postfix_mask, tau[:, None], 1.0)  # (B, H)
    return tau_tokens, postfix_mask


def lag_chunk(actions: Tensor, lag: Tensor) -> Tensor:
    """actions (B, H, D) delayed by lag (B,) ticks (>= 0, fractional): position i holds the
    chunk at i - lag, linearly interpolated, and extrapolated along its first step before
    position 0. A plan that lags the recording by ``lag`` ticks, for training a prefix-
    conditioned policy to correct a stale prefix (``rtc_training_lag_prob``)."""
    B, H, D = actions.shape
    if H < 2:
        raise ValueError(f"lag_chunk needs a chunk of at least 2 actions, got H={H}")
    pos = torch.arange(H, device=actions.device, dtype=actions.dtype)[None] - lag[:, None]
    lo = pos.floor().clamp(0, H - 2)  # (B, H): the interval's left end; 0 before the chunk
    frac = (pos - lo)[..., None]  # (B, H, 1), < 0 before position 0: extrapolation
    index = lo.long()[..., None].expand(B, H, D)
    left = actions.gather(1, index)
    right = actions.gather(1, index + 1)
    return left + frac * (right - left)


def _chunk_shape(noise: Tensor) -> tuple[int, int, int]:
    if noise.ndim != 3:
        raise ValueError(f"noise must have shape (B, H, D), got {tuple(noise.shape)}")
    B, H, D = noise.shape
    return B, H, D


def _batched_prefix(prev_chunk: Tensor, B: int, D: int) -> Tensor:
    """(n, D) or (B, n, D) -> (B, n, D)."""
    if prev_chunk.ndim == 2:
        prev_chunk = prev_chunk.expand(B, *prev_chunk.shape)
    if prev_chunk.ndim != 3 or prev_chunk.shape[0] != B or prev_chunk.shape[2] != D:
        raise ValueError(
            f"prev_chunk must have shape (n, {D}) or ({B}, n, {D}), got {tuple(prev_chunk.shape)}"
        )
    return prev_chunk
