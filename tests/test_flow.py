"""Flow-matching convention (tau = 0 noise, tau = 1 data), losses and the Euler sampler."""

import pytest
import torch

from policies.flow import (
    euler_sample,
    flow_matching_loss,
    interpolate,
    sample_tau,
    velocity_target,
)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)  # actions, noise


def test_tau_one_is_data_tau_zero_is_noise(pair):
    actions, noise = pair
    assert torch.equal(interpolate(actions, noise, torch.ones(3)), actions)
    assert torch.equal(interpolate(actions, noise, torch.zeros(3)), noise)


def test_velocity_target_is_the_path_derivative(pair):
    actions, noise = pair
    tau = torch.full((3,), 0.3, requires_grad=True)
    x = interpolate(actions, noise, tau)
    (dx_dtau,) = torch.autograd.grad(x.sum(), tau)
    assert torch.allclose(dx_dtau, velocity_target(actions, noise).sum(dim=(1, 2)))


def test_per_token_tau(pair):
    actions, noise = pair
    tau = torch.zeros(3, 5)
    tau[:, :2] = 1.0
    x = interpolate(actions, noise, tau)
    assert torch.equal(x[:, :2], actions[:, :2])
    assert torch.equal(x[:, 2:], noise[:, 2:])
    with pytest.raises(ValueError, match="per token"):
        interpolate(actions, noise, torch.zeros(3, 4))


def test_sample_tau_favours_noise_and_is_reproducible():
    tau = sample_tau((20000,), generator=torch.Generator().manual_seed(0))
    assert tau.min() >= 0.0 and tau.max() <= 0.999
    # s ~ Beta(1.5, 1) has mean 0.6, so tau = 0.999 (1 - s) has mean 0.3996: nearer noise.
    assert abs(tau.mean().item() - 0.3996) < 0.01
    assert (tau < 0.5).float().mean() > 0.6
    again = sample_tau((20000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(tau, again)
    assert sample_tau((4, 7)).shape == (4, 7)
    uniform = sample_tau((20000,), alpha=1.0, beta=1.0, max_tau=1.0)
    assert abs(uniform.mean().item() - 0.5) < 0.01


def test_loss_mask(pair):
    actions, noise = pair
    v = torch.randn_like(actions)
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert torch.allclose(
        flow_matching_loss(v, actions, noise, mask), flow_matching_loss(v, actions, noise)
    )
    mask[:, :2] = False
    changed = v.clone()
    changed[:, :2] += 100.0  # masked tokens: no effect on the loss
    assert torch.equal(
        flow_matching_loss(changed, actions, noise, mask),
        flow_matching_loss(v, actions, noise, mask),
    )
    expected = (v - (actions - noise))[:, 2:].square().mean()
    assert torch.allclose(flow_matching_loss(v, actions, noise, mask), expected)
    assert flow_matching_loss(v, actions, noise, torch.zeros(3, 5, dtype=torch.bool)) == 0.0
    assert flow_matching_loss(actions - noise, actions, noise) == 0.0


@pytest.mark.parametrize("num_steps", [1, 4, 10])
def test_euler_recovers_a_point_mass(num_steps, pair):
    target, noise = pair

    def exact_velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        # For data = target, x_tau = tau target + (1 - tau) eps gives u = (target - x) / (1 - tau).
        return (target - x) / (1.0 - tau[:, None, None])

    out = euler_sample(exact_velocity, noise, num_steps)
    assert torch.allclose(out, target, atol=1e-5)


def test_euler_prefix_is_held_clean(pair):
    actions, noise = pair
    prefix_mask = torch.zeros(3, 5, dtype=torch.bool)
    prefix_mask[:, :2] = True
    prefix_mask[2] = False  # one example with no prefix
    calls = []

    def velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), tau.clone()))
        return torch.ones_like(x)

    out = euler_sample(velocity, noise, 4, prefix=actions, prefix_mask=prefix_mask)
    assert len(calls) == 4
    for k, (x, tau) in enumerate(calls):
        assert tau.shape == (3, 5)
        assert torch.equal(x[prefix_mask], actions[prefix_mask])
        assert torch.all(tau[prefix_mask] == 1.0)
        assert torch.allclose(tau[~prefix_mask], torch.full_like(tau[~prefix_mask], k / 4))
    assert torch.equal(out[prefix_mask], actions[prefix_mask])
    assert torch.allclose(out[~prefix_mask], noise[~prefix_mask] + 1.0)  # unit velocity for 1
    with pytest.raises(ValueError, match="together"):
        euler_sample(velocity, noise, 4, prefix=actions)
