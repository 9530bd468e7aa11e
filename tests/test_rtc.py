"""Tests for policies/rtc.py: prefix weights, guidance weight, guided and prefix-conditioned
sampling (RTC, Black et al. 2025)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from policies.flow import euler_sample
from policies.rtc import (
    SCHEDULES,
    align_previous_chunk,
    guidance_weight,
    guided_sample,
    guided_velocity,
    prefix_conditioned_sample,
    prefix_flow_time,
    prefix_weights,
    sample_training_delay,
)

B, H, D = 4, 12, 3


def gaussian_field(mu: float = 0.3, var: float = 0.5):
    """Exact flow-matching velocity for data a ~ N(mu, var I): linear in x, J = k(tau) I."""

    def velocity(x, tau):
        t = tau.reshape(-1, 1, 1)
        k = t * var / (t**2 * var + (1 - t) ** 2)
        return (mu + k * (x - t * mu) - x) / (1 - t)

    return velocity


def linear_field(M: torch.Tensor, c: torch.Tensor):
    """v(x) = x M^T + c per token: dA1_hat/dx = I + (1 - tau) M, not the identity."""
    return lambda x, tau: x @ M.T + c


# ---- prefix_weights -------------------------------------------------------------------------


def exp_formula(d: int, s: int, H: int, i: int) -> float:
    if i < d:
        return 1.0
    if i >= H - s:
        return 0.0
    c = (H - s - i) / (H - s - d + 1)
    return c * (math.exp(c) - 1) / (math.e - 1)


@pytest.mark.parametrize(
    ("d", "s", "H"), [(2, 3, 10), (0, 0, 8), (3, 3, 6), (1, 4, 16), (4, 8, 12)]
)
def test_exp_schedule_matches_eq5(d, s, H):
    w = prefix_weights(d, s, H, "exp")
    assert w.shape == (H,)
    np.testing.assert_allclose(w, [exp_formula(d, s, H, i) for i in range(H)], rtol=1e-12)
    assert np.all(w[:d] == 1.0) and np.all(w[H - s :] == 0.0)
    assert np.all((w >= 0.0) & (w <= 1.0))
    assert np.all(np.diff(w[d - 1 if d else 0 : H - s]) < 0)  # strictly decreasing in between


def test_exp_schedule_spot_values():
    w = prefix_weights(2, 3, 10, "exp")  # c_i = (7 - i) / 6 on 2 <= i < 7
    c = 5 / 6
    assert w[2] == pytest.approx(c * (math.e**c - 1) / (math.e - 1), rel=1e-12)
    c = 1 / 6
    assert w[6] == pytest.approx(c * (math.e**c - 1) / (math.e - 1), rel=1e-12)
    assert w[7] == 0.0


def test_linear_ones_zeros_schedules():
    d, s, H = 2, 3, 10
    np.testing.assert_allclose(
        prefix_weights(d, s, H, "linear"), [1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0, 0, 0]
    )
    np.testing.assert_array_equal(prefix_weights(d, s, H, "ones"), [1] * 7 + [0] * 3)
    np.testing.assert_array_equal(prefix_weights(d, s, H, "zeros"), [1] * 2 + [0] * 8)


@pytest.mark.parametrize(("d", "s", "H"), [(-1, 2, 8), (3, 2, 8), (3, 6, 8), (0, 0, 0), (5, 5, 8)])
def test_prefix_weights_rejects_bad_overlap(d, s, H):
    with pytest.raises(ValueError, match=rf"d={d}, s={s}, H={H}"):
        prefix_weights(d, s, H)


def test_prefix_weights_rejects_unknown_schedule_and_non_ints():
    with pytest.raises(ValueError, match="valid schedules") as info:
        prefix_weights(1, 2, 8, "cosine")
    assert all(name in str(info.value) for name in SCHEDULES)
    with pytest.raises(ValueError, match="must be an int"):
        prefix_weights(1.0, 2, 8)


# ---- guidance_weight ------------------------------------------------------------------------


def design_formula(tau: float, beta: float) -> float:
    return min(beta, (1 - tau) / tau * (tau**2 + (1 - tau) ** 2) / (1 - tau) ** 2)


@pytest.mark.parametrize("tau", [0.1, 0.25, 0.4, 0.5, 0.7, 0.9, 0.95])
@pytest.mark.parametrize("beta", [1.0, 5.0, 100.0])
def test_guidance_weight_matches_design_formula(tau, beta):
    assert guidance_weight(tau, beta) == pytest.approx(design_formula(tau, beta), rel=1e-12)


def test_guidance_weight_values_and_ends():
    assert guidance_weight(0.5) == pytest.approx(2.0)  # the minimum of the unclipped curve
    assert guidance_weight(0.25) == pytest.approx(10 / 3)
    assert guidance_weight(0.1) == 5.0  # clipped at the default beta
    for tau in (0.0, 1e-300, 1e-12, 1 - 1e-12, 1.0):
        assert guidance_weight(tau, beta=5.0) == 5.0
        assert math.isfinite(guidance_weight(tau, beta=1e6))
    assert guidance_weight(0.0, beta=0.0) == 0.0
    with pytest.raises(ValueError, match="tau"):
        guidance_weight(1.5)
    with pytest.raises(ValueError, match="beta"):
        guidance_weight(0.5, beta=-1.0)


# ---- the gradient path ----------------------------------------------------------------------


def step_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, D, generator=g)
    target = torch.randn(B, H, D, generator=g)
    weights = torch.as_tensor(prefix_weights(3, 4, H), dtype=torch.float32)
    return x, target, weights


def test_correction_is_vjp_through_the_network():
    x, target, weights = step_inputs()
    g = torch.Generator().manual_seed(1)
    M = torch.randn(D, D, generator=g)  # not symmetric: J^T e != J e
    c = torch.randn(D, generator=g)
    tau, beta = 0.3, 5.0
    field = linear_field(M, c)
    v = field(x, tau)
    a1_hat = x + (1 - tau) * v
    error = weights[:, None] * (target - a1_hat)
    by_hand = error + (1 - tau) * error @ M  # (I + (1 - tau) M)^T e, row-vector form
    guided = guided_velocity(field, x, tau, target, weights, beta)
    gw = guidance_weight(tau, beta)
    torch.testing.assert_close(guided, v + gw * by_hand)
    assert not torch.allclose(guided, v + gw * error, atol=1e-3)  # the identity shortcut
    assert not guided.requires_grad


def test_correction_through_mlp_differs_from_raw_error():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(D + 1, 32), nn.Tanh(), nn.Linear(32, D))

    def field(x, tau):
        t = tau.reshape(-1, 1, 1).expand(*x.shape[:2], 1)
        return mlp(torch.cat([x, t], dim=-1))

    x, target, weights = step_inputs()
    tau = 0.4
    with torch.no_grad():  # the caller's no_grad must not cut the gradient path
        guided = guided_velocity(field, x, tau, target, weights)
    v = field(x, x.new_full((B,), tau)).detach()
    error = weights[:, None] * (target - (x + (1 - tau) * v))
    correction = (guided - v) / guidance_weight(tau)

    def a1_hat(z):
        return z + (1 - tau) * field(z, z.new_full((B,), tau))

    _, vjp = torch.func.vjp(a1_hat, x)
    torch.testing.assert_close(correction, vjp(error)[0], rtol=1e-4, atol=1e-5)
    assert (correction - error).abs().max() > 1e-2
    assert all(p.grad is None for p in mlp.parameters())


def test_x_independent_field_reduces_to_identity_jacobian():
    x, target, weights = step_inputs()
    c = torch.randn(B, H, D)
    tau, beta = 0.6, 5.0
    guided = guided_velocity(lambda z, t: 0 * z + c, x, tau, target, weights, beta)
    error = weights[:, None] * (target - (x + (1 - tau) * c))
    torch.testing.assert_close(guided, c + guidance_weight(tau, beta) * error)


def test_detached_velocity_is_rejected():
    x, target, weights = step_inputs()
    field = linear_field(torch.eye(D), torch.zeros(D))
    with pytest.raises(RuntimeError, match="no gradient path"):
        guided_velocity(lambda z, t: field(z, t).detach(), x, 0.5, target, weights)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        guided_sample(field, x, target, weights)


# ---- guided_sample --------------------------------------------------------------------------


def test_guidance_pulls_the_frozen_prefix_towards_the_previous_chunk():
    torch.manual_seed(0)
    d, s = 3, 4
    field = gaussian_field()
    noise = torch.randn(16, H, D)
    prev = 0.3 + 0.7 * torch.randn(H - s, D)  # (n, D), shared by the batch
    guided = guided_sample(field, noise, prev, prefix_weights(d, s, H), num_steps=10)
    unguided = euler_sample(field, noise, 10)
    assert guided.shape == (16, H, D) and not guided.requires_grad
    err_guided = (guided[:, :d] - prev[:d]).pow(2).mean()
    err_unguided = (unguided[:, :d] - prev[:d]).pow(2).mean()
    assert err_guided < 0.05 * err_unguided


def test_zero_weights_equal_unguided_euler():
    field = linear_field(torch.tensor([[0.5, 0.2, 0.0], [0.0, -0.3, 0.1], [0.2, 0.0, 0.4]]), 0.1)
    noise = torch.randn(B, H, D)
    prev = torch.randn(B, H - 2, D)
    out = guided_sample(field, noise, prev, np.zeros(H), num_steps=7)
    torch.testing.assert_close(out, euler_sample(field, noise, 7), rtol=0, atol=0)


def test_per_example_weights_and_padding_rule():
    field = gaussian_field()
    noise = torch.randn(2, H, D)
    prev = torch.randn(2, H - 4, D)
    w = np.stack([prefix_weights(2, 4, H), prefix_weights(4, 4, H, "zeros")])  # (B, H)
    assert guided_sample(field, noise, prev, w, num_steps=3).shape == (2, H, D)
    with pytest.raises(ValueError, match="s = H - n"):
        guided_sample(field, noise, prev, prefix_weights(2, 2, H), num_steps=3)
    with pytest.raises(ValueError, match="weights must have shape"):
        guided_sample(field, noise, prev, np.zeros(H + 1), num_steps=3)


def test_align_previous_chunk():
    prev = torch.randn(5, D)
    out = align_previous_chunk(prev, H)
    assert out.shape == (H, D)
    torch.testing.assert_close(out[:5], prev)
    assert torch.all(out[5:] == 0)
    with pytest.raises(ValueError, match="at most H"):
        align_previous_chunk(torch.randn(H + 1, D), H)


# ---- training-time RTC ----------------------------------------------------------------------


def test_prefix_conditioned_sample_keeps_prefix_and_builds_no_graph():
    torch.manual_seed(0)
    net = nn.Linear(D + 1, D)  # parameters require grad
    seen = []

    def field(x, tau):
        seen.append(tau.clone())
        assert not torch.is_grad_enabled()
        return net(torch.cat([x, tau[..., None]], dim=-1))

    noise = torch.randn(B, H, D)
    prev = torch.randn(B, 6, D)
    d = torch.tensor([0, 2, 3, 6])
    out = prefix_conditioned_sample(field, noise, prev, d, num_steps=5)
    assert out.shape == (B, H, D)
    assert not out.requires_grad and out.grad_fn is None
    for b, db in enumerate(d.tolist()):
        assert torch.equal(out[b, :db], prev[b, :db])
    assert len(seen) == 5
    for k, tau in enumerate(seen):
        assert tau.shape == (B, H)
        assert torch.all(tau[1, :2] == 1.0) and torch.allclose(tau[1, 2:], torch.tensor(k / 5))
    assert not torch.equal(out[0], noise[0])


def test_prefix_conditioned_sample_rejects_bad_delay():
    with pytest.raises(ValueError, match="inference delay"):
        prefix_conditioned_sample(lambda x, t: x, torch.randn(B, H, D), torch.randn(3, D), 4)


def test_prefix_flow_time_gives_clean_prefix_and_postfix_mask():
    tau = torch.tensor([0.2, 0.7])
    delay = torch.tensor([0, 3])
    tau_tokens, postfix = prefix_flow_time(tau, delay, 5)
    torch.testing.assert_close(tau_tokens, torch.tensor([[0.2] * 5, [1, 1, 1, 0.7, 0.7]]))
    assert postfix.tolist() == [[True] * 5, [False] * 3 + [True] * 2]
    actions, eps = torch.randn(2, 5, D), torch.randn(2, 5, D)
    x = tau_tokens[..., None] * actions + (1 - tau_tokens[..., None]) * eps
    torch.testing.assert_close(x[1, :3], actions[1, :3])


@pytest.mark.parametrize(("zero_prob", "expected_zero"), [(None, 1 / 9), (0.5, 0.5), (0.0, 0.0)])
def test_sample_training_delay_share_of_no_prefix(zero_prob, expected_zero):
    torch.manual_seed(0)
    d = sample_training_delay(20000, 8, zero_prob)
    assert d.min() >= 0 and d.max() == 8
    assert abs((d == 0).float().mean().item() - expected_zero) < 0.015
    nonzero = d[d > 0]
    counts = torch.bincount(nonzero, minlength=9)[1:].float() / nonzero.numel()
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.015)  # d > 0 stays uniform


def test_lag_chunk_delays_the_chunk_and_extrapolates_before_it():
    import torch

    from policies.rtc import lag_chunk

    H = 6
    t = torch.arange(H, dtype=torch.float32)
    actions = torch.stack([t, t**2], dim=-1)[None].repeat(3, 1, 1)  # (3, H, 2)
    lagged = lag_chunk(actions, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(lagged[0], actions[0])  # no lag: the chunk itself
    assert torch.allclose(lagged[1, 1:], actions[1, :-1])  # one tick: shifted by one
    assert torch.allclose(lagged[1, 0], torch.tensor([-1.0, -1.0]))  # along the first step
    assert torch.allclose(lagged[2, 1:, 0], t[1:] - 0.5)  # linear in between
    assert torch.allclose(lagged[2, 1:, 1], (t[:-1] ** 2 + t[1:] ** 2) / 2)  # midpoints
