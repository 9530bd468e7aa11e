"""Flow matching: the one place that fixes the time convention.

Conditional flow matching with the linear (rectified-flow) path, Lipman et al. 2023,
"Flow Matching for Generative Modeling", and Liu et al. 2023, "Flow Straight and Fast".

    tau = 0 is noise, tau = 1 is data.
    x_tau = tau * a + (1 - tau) * eps          (the probability path, eps ~ N(0, I))
    u = d x_tau / d tau = a - eps              (the velocity target)
    a = x_0 + integral_0^1 v(x_tau, tau) dtau  (Euler from tau = 0 to 1 at inference)

The path is the one written in the pi0 paper (Black et al. 2024, Sec. IV), but openpi's code
puts noise at t = 1 and integrates from 1 to 0: anything ported from openpi is converted with
tau = 1 - t and v = -v_openpi.

Flow time can be per example, shape (B,), or per token, shape (B, H): training-time real-time
chunking (Black et al. 2025, arXiv 2512.05964; see ``policies/rtc.py``) holds an already
executed prefix of the chunk clean at tau = 1 while the rest is denoised.
"""

from collections.abc import Callable

import numpy as np
import torch
from scipy.special import betaincinv
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""v = velocity_fn(x_tau (B, H, D), tau (B,) or (B, H)) -> (B, H, D)."""


def sample_tau(
    shape: tuple[int, ...],
    alpha: float = 1.5,
    beta: float = 1.0,
    max_tau: float = 0.999,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw training flow times, weighted towards the noisy end as in pi0.

    openpi draws pi0's time t (t = 1 is noise there) as t = 0.999 * s + 0.001 with
    s ~ Beta(1.5, 1), whose density 1.5 * s^0.5 puts more mass near s = 1, i.e. near noise.
    We draw the same s and map it to our convention: tau = 1 - t = max_tau * (1 - s), so
    tau lies in [0, max_tau] with more mass near tau = 0 (noise), and never reaches clean data.

    s is drawn by inverting the Beta CDF on uniforms from ``generator`` (a CPU generator), so
    the draw is reproducible; the result is moved to ``device``.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta({alpha}, {beta}) needs alpha > 0 and beta > 0")
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    s = torch.from_numpy(np.asarray(betaincinv(alpha, beta, u.numpy()), dtype=np.float64))
    return (max_tau * (1.0 - s)).to(device=device, dtype=torch.float32)


def expand_tau(tau: Tensor, x: Tensor) -> Tensor:
    """Shape tau (B,) or (B, H) to broadcast against x (B, H, D)."""
    if tau.shape != x.shape[: tau.ndim]:
        raise ValueError(
            f"flow time has shape {tuple(tau.shape)}, actions {tuple(x.shape)}: tau must be "
            "(B,) per example or (B, H) per token"
        )
    return tau.reshape(*tau.shape, *([1] * (x.ndim - tau.ndim)))


def interpolate(actions: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
    """x_tau = tau * a + (1 - tau) * eps; tau (B,) or (B, H) -> x_tau (B, H, D)."""
    t = expand_tau(tau, actions)
    return t * actions + (1.0 - t) * noise


def velocity_target(actions: Tensor, noise: Tensor) -> Tensor:
    """u = a - eps, the velocity of the linear path, (B, H, D)."""
    return actions - noise


def flow_matching_loss(
    v_pred: Tensor, actions: Tensor, noise: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Mean squared error between v_pred and a - eps, over the tokens where mask (B, H) is True.

    The mask drops padded steps and, for training-time RTC, the clean prefix (the loss is on
    the postfix only). A mask with no True entry gives a zero loss, not NaN.
    """
    err = (v_pred - velocity_target(actions, noise)).square().mean(dim=-1)  # (B, H)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)


def euler_sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    num_steps: int = 10,
    prefix: Tensor | None = None,
    prefix_mask: Tensor | None = None,
) -> Tensor:
    """Integrate dx/dtau = v(x, tau) from tau = 0 (noise (B, H, D)) to tau = 1 with Euler steps.

    With ``prefix`` (B, H, D) and ``prefix_mask`` (B, H), the masked positions are overwritten
    with the clean prefix before every step and at the end, and their flow time is 1 (per-token
    tau): inference for training-time RTC, with no backward pass.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: Euler sampling needs at least one step")
    if (prefix is None) != (prefix_mask is None):
        raise ValueError("pass prefix and prefix_mask together (or neither)")
    batch = noise.shape[0]
    dt = 1.0 / num_steps
    x = noise
    for k in range(num_steps):
        tau = torch.full((batch,), k * dt, device=noise.device, dtype=noise.dtype)  # (B,)
        if prefix is not None:
            x = torch.where(prefix_mask[..., None], prefix, x)
            tau = torch.where(prefix_mask, 1.0, tau[:, None])  # (B, H)
        x = x + dt * velocity_fn(x, tau)
    if prefix is not None:
        x = torch.where(prefix_mask[..., None], prefix, x)
    return x
