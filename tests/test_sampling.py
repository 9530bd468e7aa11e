"""runtime/serving/synthetic.py (exact Gaussian flow model) and runtime/serving/sampling.py
(one sampler per sampling method: plain, RTC-guided, prefix-conditioned)."""

import dataclasses

import numpy as np
import pytest
import torch

from policies.flow import euler_sample
from runtime.robot.executors import EXECUTORS
from runtime.serving.policy import FlowModel
from runtime.serving.sampling import FlowChunkPolicy
from runtime.serving.synthetic import GaussianChunkModel, dct_basis
from runtime.wire.info import ChunkPolicy, UnsupportedRequest
from runtime.wire.keys import STATE
from runtime.wire.protocol import ObservationRequest

H, A = 50, 6
S, D = 20, 5  # execution horizon and delay of the second chunk


def request(
    executor: str = "naive",  # the sampling method of EXECUTORS[executor]
    tick: int = 0,
    state: np.ndarray | None = None,
    prev: np.ndarray | None = None,
    d: int = 0,
    s: int = 0,
    seed: int | None = None,
    rid: int = 0,
) -> ObservationRequest:
    state = np.zeros(A, np.float32) if state is None else state
    return ObservationRequest(
        request_id=rid,
        robot_id="arm",
        tick=tick,
        observation={STATE: state},
        instruction="reach",
        delay=d,
        execution_horizon=s,
        sampling=EXECUTORS[executor],
        prev_actions=prev,
        seed=seed,
    )


@pytest.fixture(scope="module")
def model() -> GaussianChunkModel:
    return GaussianChunkModel(chunk_length=H, action_dim=A)


@pytest.fixture(scope="module")
def policy(model: GaussianChunkModel) -> FlowChunkPolicy:
    return FlowChunkPolicy(model, num_steps=10)


@pytest.fixture(scope="module")
def first_chunk(policy: FlowChunkPolicy) -> np.ndarray:
    return policy.infer([request(seed=1)])[0]  # (H, A)


def second_requests(first: np.ndarray, executor: str, count: int = 8) -> list:
    """The request made after S actions of `first` ran: its unexecuted actions as prev."""
    return [
        request(executor, tick=S, state=first[S - 1], prev=first[S:], d=D, s=S, seed=10 + i, rid=i)
        for i in range(count)
    ]


# ---- the synthetic model --------------------------------------------------------------------


def test_synthetic_model_implements_flow_model(model):
    assert isinstance(model, FlowModel)
    assert model.info.model_id == "synthetic-gaussian"
    assert (model.info.chunk_length, model.info.action_dim) == (H, A)
    basis = dct_basis(H, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)


def test_euler_samples_have_the_model_mean_and_covariance(model):
    """Euler with many steps on the exact velocity draws N(mu, Sigma) per action dimension."""
    n = 300
    requests = [request(tick=7, state=np.linspace(-1, 1, A).astype(np.float32))] * n
    velocity = model.velocity_fn(requests)
    noise = torch.randn(n, H, A, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = euler_sample(velocity, noise, num_steps=100).double()  # (n, H, A)
    mu = model.mean(requests[:1])[0]  # (H, A)
    residual = (x - mu).permute(0, 2, 1).reshape(-1, H)  # (n A, H): dims are independent
    assert residual.mean(0).abs().max() < 0.05
    cov = residual.T @ residual / len(residual)
    sigma = model.covariance
    assert torch.linalg.matrix_norm(cov - sigma) / torch.linalg.matrix_norm(sigma) < 0.1


def test_per_example_and_per_token_flow_time_agree(model):
    velocity = model.velocity_fn([request(tick=3), request(tick=40)])
    x = torch.randn(2, H, A, requires_grad=True)
    tau = torch.tensor([0.3, 0.8])
    v_example = velocity(x, tau)
    v_token = velocity(x, tau[:, None].expand(2, H))
    torch.testing.assert_close(v_example, v_token, rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad(v_example.sum(), x)  # a gradient path through the model
    assert grad.abs().sum() > 0


def test_prefix_conditioned_samples_have_the_conditional_mean(model):
    """A clean prefix at tau = 1 makes the exact velocity sample a | prefix (Gaussian
    conditioning), so the mean of the rest is mu_r + Sigma_rp Sigma_pp^-1 (prefix - mu_p)."""
    n, d = 200, 6
    requests = [request(tick=0)] * n
    mu = model.mean(requests[:1])[0]  # (H, A)
    prefix = mu[:d] + 0.3  # (d, A)
    velocity = model.velocity_fn(requests)
    target = torch.zeros(n, H, A, dtype=torch.float64)
    target[:, :d] = prefix
    mask = (torch.arange(H) < d).expand(n, H)
    noise = torch.randn(n, H, A, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        x = euler_sample(velocity, noise, 100, prefix=target, prefix_mask=mask)
    sigma = model.covariance
    expected = mu[d:] + sigma[d:, :d] @ torch.linalg.solve(sigma[:d, :d], prefix - mu[:d])
    assert (x[:, d:].mean(0) - expected).abs().max() < 0.05


# ---- the policy -----------------------------------------------------------------------------


def test_every_executor_returns_absolute_float32_chunks(policy, first_chunk):
    assert isinstance(policy, ChunkPolicy)
    batch = [r for executor in EXECUTORS for r in second_requests(first_chunk, executor, 2)]
    chunks = policy.infer(batch)
    assert len(chunks) == len(batch)
    for chunk in chunks:
        assert chunk.shape == (H, A) and chunk.dtype == np.float32 and np.isfinite(chunk).all()


def test_rtc_follows_the_previous_chunk_far_more_closely_than_naive(policy, first_chunk):
    prev = first_chunk[S:]

    def prefix_error(executor: str) -> float:
        chunks = np.stack(policy.infer(second_requests(first_chunk, executor)))
        return float(np.abs(chunks[:, :D] - prev[:D]).mean())

    naive, rtc, hard = prefix_error("naive"), prefix_error("rtc"), prefix_error("rtc_hard")
    assert rtc < 0.5 * naive
    assert hard < 0.6 * naive


def test_rtc_trained_reproduces_the_frozen_prefix_exactly(policy, first_chunk):
    for chunk in policy.infer(second_requests(first_chunk, "rtc_trained", 3)):
        np.testing.assert_allclose(chunk[:D], first_chunk[S : S + D], atol=1e-5)
        assert not np.allclose(chunk[D : H - S], first_chunk[S + D :], atol=1e-3)


def test_rtc_without_prev_actions_is_plain_sampling(policy):
    plain = policy.infer([request("naive", d=2, s=10, seed=3)])[0]
    for executor in ("rtc", "rtc_hard", "rtc_trained"):
        first = policy.infer([request(executor, d=2, s=10, seed=3)])[0]
        np.testing.assert_allclose(first, plain, atol=1e-6)


def test_a_seeded_request_is_reproducible_in_any_batch(policy):
    alone = policy.infer([request(seed=42)])[0]
    batched = policy.infer([request(seed=7), request(), request(seed=42)])
    np.testing.assert_array_equal(batched[2], alone)
    assert not np.allclose(batched[0], alone)


def test_unknown_sampling_method_names_the_known_ones(policy):
    with pytest.raises(UnsupportedRequest, match=r"known methods.*prefix"):
        policy.infer([dataclasses.replace(request("naive"), sampling="teleport")])


@pytest.mark.parametrize(
    ("d", "s", "match"),
    [(6, 5, "delay d <= execution_horizon"), (5, 46, "s <= H - d"), (5, 20, "at least the d")],
)
def test_inconsistent_delay_and_horizon_are_refused(policy, first_chunk, d, s, match):
    prev = first_chunk[S:] if d <= s else first_chunk[40:]
    prev = prev[:3] if match == "at least the d" else prev
    with pytest.raises(ValueError, match=match):
        policy.infer([request("rtc", prev=prev, d=d, s=s)])


@pytest.mark.parametrize("shape", [(H + 1, A), (10, A - 1)])
def test_bad_prev_actions_shape_is_refused(policy, shape):
    with pytest.raises(ValueError, match="prev_actions has shape"):
        policy.infer([request("rtc", prev=np.zeros(shape, np.float32), d=1, s=5)])


def test_bad_state_is_refused_with_the_expected_shape(policy):
    with pytest.raises(ValueError, match=r"expects float32 \(6,\)"):
        policy.infer([request(state=np.zeros(3, np.float32))])


# ---- Bidirectional Decoding ----------------------------------------------------------------


def bid_candidates(policy: FlowChunkPolicy, r: ObservationRequest, n: int) -> np.ndarray:
    """The n plain samples a bid:<n> request draws from (its seed's first n noise draws)."""
    gen = torch.Generator().manual_seed(r.seed)
    noise = torch.randn((n, H, A), generator=gen)
    plain = dataclasses.replace(r, sampling="plain")
    with torch.no_grad():
        x = euler_sample(policy.model.velocity_fn([plain] * n), noise, policy.num_steps)
    return policy.model.unnormalize_actions(x)  # (n, H, A)


def test_bid_sends_the_sample_most_coherent_with_the_previous_chunk(policy, first_chunk):
    from policies.rtc import prefix_weights

    (r,) = second_requests(first_chunk, "bid", 1)
    assert r.sampling == "bid:16"
    chunk = policy.infer([r])[0]
    candidates = bid_candidates(policy, r, 16)
    prev = policy.model.normalize_actions(first_chunk[S:]).numpy()  # (H - S, A)
    normed = policy.model.normalize_actions(candidates.reshape(-1, A)).numpy().reshape(16, H, A)
    w = prefix_weights(D, S, H, "exp")[: H - S]
    loss = (np.linalg.norm(normed[:, : H - S] - prev, axis=-1) * w).sum(-1)
    assert loss.std() > 0  # the candidates differ, so the choice means something
    np.testing.assert_allclose(chunk, candidates[loss.argmin()], atol=1e-5)
    # far more coherent than a plain sample, as coherent as the best of 16
    naive = np.stack(policy.infer(second_requests(first_chunk, "naive", 8)))
    assert (
        np.abs(chunk[:D] - first_chunk[S : S + D]).mean()
        < np.abs(naive[:, :D] - first_chunk[S : S + D]).mean()
    )


def test_bid_with_one_sample_or_no_previous_chunk_is_plain_sampling(policy, first_chunk):
    (r,) = second_requests(first_chunk, "naive", 1)
    plain = policy.infer([r])[0]
    np.testing.assert_array_equal(
        policy.infer([dataclasses.replace(r, sampling="bid:1")])[0], plain
    )
    first = dataclasses.replace(request(seed=3, d=2, s=10), sampling="bid:8")
    np.testing.assert_array_equal(policy.infer([first])[0], policy.infer([request(seed=3)])[0])


def test_bid_forward_contrast_uses_the_weak_policy(model, first_chunk):
    """With a weak policy the forward contrast changes the choice for some requests; with
    a weak policy identical to the strong one the contrast cancels."""
    weak = GaussianChunkModel(chunk_length=H, action_dim=A, goal_amplitude=0.2, sigma=1.0)
    backward_only = FlowChunkPolicy(model, num_steps=10)
    contrast = FlowChunkPolicy(model, num_steps=10, weak=weak, bid_k=3)
    same = FlowChunkPolicy(model, num_steps=10, weak=model, bid_k=3)
    requests = second_requests(first_chunk, "bid", 8)
    base = np.stack(backward_only.infer(requests))
    np.testing.assert_allclose(np.stack(same.infer(requests)), base, atol=1e-6)
    assert not np.allclose(np.stack(contrast.infer(requests)), base, atol=1e-4)


@pytest.mark.parametrize("name", ["bid:0", "bid:65", "bid:x", "bid:"])
def test_bad_bid_sample_counts_are_unsupported(policy, name):
    with pytest.raises(UnsupportedRequest, match="bid:<N>"):
        policy.infer([dataclasses.replace(request("naive"), sampling=name)])
