"""The VLA: shapes, the attention mask, knowledge insulation, the prefix cache, training."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from policies.fast import FastTokenizer
from policies.vla import VLA, VLAConfig, make_attention_mask

CAMERAS = ("observation.images.front", "observation.images.wrist")


def tiny_config(**overrides) -> VLAConfig:
    values = dict(
        image_keys=CAMERAS, image_size=(16, 16), patch_size=8, state_dim=3, action_dim=2,
        chunk_length=6, width=32, depth=2, num_heads=2, expert_width=16, max_lang_tokens=8,
        fast_vocab_size=20, max_fast_tokens=5, augment_shift=0,  # deterministic forwards
        vision="patch", fast_loss=True, insulation=True, expert="transformer",  # recipe=ki
    )  # fmt: skip
    values.update(overrides)
    return VLAConfig(**values)


def make_model(**overrides) -> VLA:
    torch.manual_seed(0)
    return VLA(tiny_config(**overrides))


def make_batch(model: VLA, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    B, H, A = 2, cfg.chunk_length, cfg.action_dim
    lang_tokens, lang_mask = model.tokenize_instructions(["pick", "go left"])
    fast_mask = torch.ones(B, cfg.max_fast_tokens, dtype=torch.bool)
    fast_mask[1, 3:] = False
    batch = {key: torch.rand(B, 3, *cfg.image_size, generator=g) for key in CAMERAS}
    batch |= {
        "observation.state": torch.randn(B, cfg.state_dim, generator=g),
        "action": torch.randn(B, H, A, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "lang_tokens": lang_tokens,
        "lang_mask": lang_mask,
        "fast_tokens": torch.randint(0, cfg.fast_vocab_size, (B, cfg.max_fast_tokens), generator=g),
        "fast_mask": fast_mask,
    }
    return batch


def noisy_actions(model: VLA, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return torch.randn(2, cfg.chunk_length, cfg.action_dim, generator=g), torch.rand(2, generator=g)


def test_shapes():
    model = make_model()
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, logits = model.joint_forward(batch, x_t, tau)
    assert velocity.shape == (2, 6, 2)
    assert logits.shape == (2, 5, 20)
    loss, terms = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(terms) == {"loss", "fm", "fast_ce"}
    assert sample_chunk(model, batch).shape == (2, 6, 2)
    flow_only = make_model(fast_loss=False, insulation=False)
    _, terms = flow_only(make_batch(flow_only))
    assert set(terms) == {"loss", "fm"}


def test_attention_mask_layout():
    prefix_valid = torch.tensor([[True, True, False]])  # P = 3, last prefix token is padding
    fast_valid = torch.tensor([[True, True]])  # F = 2
    mask = make_attention_mask(prefix_valid, fast_valid, 2)[0]  # (7, 7)
    P, F = slice(0, 3), slice(3, 5)
    A = slice(5, 7)
    assert mask[:, 2].sum() == 0  # nobody reads padding
    assert mask[P, :2].all() and not mask[P, 3:].any()  # prefix: bidirectional, only itself
    assert mask[F, :2].all() and mask[A, :2].all()  # everyone reads the prefix
    assert torch.equal(mask[F, F], torch.tensor([[True, False], [True, True]]))  # FAST causal
    assert mask[A, A].all()  # actions: bidirectional
    assert not mask[F, A].any() and not mask[A, F].any()  # FAST and actions never meet


def test_insulation_stops_flow_gradients_into_the_backbone():
    for insulation in (True, False):
        model = make_model(insulation=insulation)
        _, terms = model(make_batch(model))
        terms["fm"].backward()
        backbone_grads = [p.grad for p in model.backbone.parameters()]
        reaches_backbone = any(g is not None and g.abs().sum() > 0 for g in backbone_grads)
        assert reaches_backbone != insulation
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())


def test_fast_and_expert_tokens_do_not_see_each_other():
    model = make_model()
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, logits = model.joint_forward(batch, x_t, tau)

    other_fast = dict(batch, fast_tokens=(batch["fast_tokens"] + 7) % 20)
    velocity2, logits2 = model.joint_forward(other_fast, x_t, tau)
    torch.testing.assert_close(velocity2, velocity, rtol=0, atol=1e-6)
    assert not torch.allclose(logits2, logits)  # the perturbation does matter to FAST

    x_t2, tau2 = noisy_actions(model, seed=2)
    velocity3, logits3 = model.joint_forward(batch, x_t2, tau2)
    torch.testing.assert_close(logits3, logits, rtol=0, atol=1e-6)
    assert not torch.allclose(velocity3, velocity)


def test_prefix_cache_matches_the_full_forward():
    model = make_model()
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, _ = model.joint_forward(batch, x_t, tau)
    cached = model.denoise_step(model.encode_prefix(batch), x_t, tau)
    torch.testing.assert_close(cached, velocity, rtol=1e-5, atol=1e-5)


def test_per_token_tau():
    model = make_model()
    batch = make_batch(model)
    cache = model.encode_prefix(batch)
    x_t, tau = noisy_actions(model)
    per_token = tau[:, None].expand(2, 6).clone()
    torch.testing.assert_close(
        model.denoise_step(cache, x_t, per_token), model.denoise_step(cache, x_t, tau)
    )
    per_token[:, 0] = 1.0
    assert not torch.allclose(
        model.denoise_step(cache, x_t, per_token), model.denoise_step(cache, x_t, tau)
    )


def test_velocity_is_differentiable_in_x():
    model = make_model()
    velocity_fn = model.velocity_fn(make_batch(model))
    x_t, tau = noisy_actions(model)
    x_t.requires_grad_(True)
    (grad,) = torch.autograd.grad(velocity_fn(x_t, tau).square().sum(), x_t)
    assert grad.abs().sum() > 0


def test_predict_is_deterministic_given_noise():
    model = make_model().eval()
    batch = make_batch(model)
    noise, _ = noisy_actions(model)
    first = sample_chunk(model, batch, noise=noise)
    assert torch.equal(sample_chunk(model, batch, noise=noise), first)
    assert not torch.equal(sample_chunk(model, batch, noise=noise, num_steps=3), first)
    prefix_mask = torch.zeros(2, 6, dtype=torch.bool)
    prefix_mask[:, :2] = True
    held = sample_chunk(model, batch, noise, prefix=batch["action"], prefix_mask=prefix_mask)
    assert torch.equal(held[:, :2], batch["action"][:, :2])


@pytest.mark.parametrize("overrides", [{}, {"rtc_training_max_delay": 3}])
def test_loss_decreases_on_a_fixed_batch(overrides):
    model = make_model(**overrides)
    batch = make_batch(model)
    noise, tau = noisy_actions(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # the same RTC delays every step
        loss, _ = model(batch, noise=noise, tau=tau)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_with_a_fitted_fast_tokenizer():
    model = make_model(fast_vocab_size=64, max_fast_tokens=12)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 6)[None, :, None]
    chunks = np.sin(
        2 * np.pi * rng.uniform(0.1, 1, (200, 1, 2)) * t + rng.uniform(0, 6, (200, 1, 2))
    )
    tokenizer = FastTokenizer(vocab_size=64).fit(chunks)
    batch = make_batch(model)
    tokens, mask = tokenizer.encode_padded(batch["action"].clamp(-1, 1).numpy(), max_len=12)
    batch |= {"fast_tokens": torch.from_numpy(tokens), "fast_mask": torch.from_numpy(mask)}
    loss, terms = model(batch)
    assert torch.isfinite(loss) and terms["fast_ce"] > 0


def test_padded_steps_are_out_of_the_flow_loss():
    model = make_model()
    batch = make_batch(model)
    noise, tau = noisy_actions(model)
    batch["action_is_pad"][0, 3:] = True
    _, terms = model(batch, noise=noise, tau=tau)
    # New targets on the padded steps, the same noisy input x_tau = tau a + (1 - tau) eps.
    moved = dict(batch, action=batch["action"].clone())
    moved["action"][0, 3:] += 10.0
    moved_noise = noise.clone()
    moved_noise[0, 3:] -= 10.0 * tau[0] / (1.0 - tau[0])
    _, moved_terms = model(moved, noise=moved_noise, tau=tau)
    torch.testing.assert_close(moved_terms["fm"], terms["fm"])


def test_a_chunk_padded_from_its_first_action_is_out_of_the_fast_loss():
    model = make_model()
    batch = make_batch(model)
    noise, tau = noisy_actions(model)
    batch["action_is_pad"][1, 5:] = True  # past the episode's end: FAST still reads it
    _, terms = model(batch, noise=noise, tau=tau)
    other = dict(batch, fast_tokens=batch["fast_tokens"].clone())
    other["fast_tokens"][1, :3] = (other["fast_tokens"][1, :3] + 1) % model.config.fast_vocab_size
    assert not torch.allclose(model(other, noise=noise, tau=tau)[1]["fast_ce"], terms["fast_ce"])
    dropped = dict(batch, action_is_pad=batch["action_is_pad"].clone())
    dropped["action_is_pad"][1] = True  # failure_actions=drop: out of every action loss
    _, kept = model(dropped, noise=noise, tau=tau)
    _, changed = model(dict(dropped, fast_tokens=other["fast_tokens"]), noise=noise, tau=tau)
    torch.testing.assert_close(changed["fast_ce"], kept["fast_ce"])


def test_instruction_tokenizer_handles_any_text(caplog):
    model = make_model(language="bytes")
    with caplog.at_level(logging.WARNING):
        tokens, mask = model.tokenize_instructions(["", "grüß", "a very long instruction"])
    assert tokens.shape == mask.shape == (3, 8)
    assert mask.sum(dim=1).tolist() == [0, 6, 8]  # "grüß" is 6 UTF-8 bytes
    assert "truncated" in caplog.text
    assert torch.all(tokens[~mask] == 0)


def test_word_tokens_give_each_word_one_token(caplog):
    model = make_model(language="words", max_lang_tokens=4)
    texts = ["", "reach the RED target", "reach the blue target", "one two three four five"]
    with caplog.at_level(logging.WARNING):
        tokens, mask = model.tokenize_instructions(texts)
    assert tokens.shape == (4, 4) and mask.sum(dim=1).tolist() == [0, 4, 4, 4]
    assert "truncated" in caplog.text and torch.all(tokens[~mask] == 0)
    # case-insensitive, one id per word: only the colour differs between the two instructions
    assert (tokens[1] != tokens[2]).tolist() == [False, False, True, False]
    assert model.tokenize_instructions(["reach the red target"])[0].equal(tokens[1:2])
    with pytest.raises(ValueError, match="language"):
        make_model(language="phonemes")


def test_errors_say_what_to_do():
    model = make_model()
    batch = make_batch(model)
    small = dict(batch, **{CAMERAS[0]: torch.rand(2, 3, 8, 8)})
    with pytest.raises(ValueError, match="image_size"):
        sample_chunk(model, small)
    missing = {k: v for k, v in batch.items() if k != CAMERAS[1]}
    with pytest.raises(KeyError, match="wrist"):
        sample_chunk(model, missing)
    with pytest.raises(ValueError, match="fast_vocab_size"):
        model(dict(batch, fast_tokens=batch["fast_tokens"] + 20))
    with pytest.raises(ValueError, match="chunk_length"):
        model(dict(batch, action=batch["action"][:, :4]))
    with pytest.raises(ValueError, match="rtc_training_max_delay"):
        tiny_config(rtc_training_max_delay=6)


def test_default_model_fits_a_10_mb_checkpoint():
    model = VLA(VLAConfig())
    assert sum(p.numel() for p in model.parameters()) * 4 <= 10 * 2**20


@torch.no_grad()
def sample_chunk(model, batch, noise=None, num_steps=None, prefix=None, prefix_mask=None):
    """Euler-sample a normalized chunk from the model's velocity (the serving side's plain
    and prefix sampling, without its request handling)."""
    from policies.flow import euler_sample

    cfg = model.config
    if noise is None:
        B = len(batch["observation.state"])
        noise = torch.randn(B, cfg.chunk_length, cfg.action_dim)
    steps = cfg.num_steps if num_steps is None else num_steps
    return euler_sample(model.velocity_fn(batch), noise, steps, prefix, prefix_mask)


def test_the_tasks_words_get_distinct_ids():
    """Hashed word ids may collide; none of the words the tasks' instructions use do."""
    import re

    from policies.language import words
    from sim import TASKS, SimEnv
    from sim.tasks.base import direction_words

    vocabulary = {"move", "forward", "back", "left", "right", "up", "down", "and"}
    for name in TASKS:
        env = SimEnv(name, render=False)
        for seed in range(6):
            env.reset(seed=seed)
            for text in (env.instruction, *env.task.phases()):
                vocabulary |= set(re.findall(r"[a-z0-9]+", text.lower()))
        env.close()
    vocabulary |= set(direction_words(np.array([0.02, -0.02, 0.03])).split())
    buckets = VLAConfig().word_buckets
    ids = {w: words(w, 1, buckets)[0] for w in vocabulary}
    assert len(set(ids.values())) == len(vocabulary), ids
    assert {"red", "green", "blue", "cube", "target", "bin", "follow"} <= vocabulary


def test_aux_env_state_trains_the_backbone_under_insulation_and_leaves_inference_alone():
    model = make_model(aux_env_state=1.0, env_state_dim=4)
    batch = make_batch(model)
    batch["observation.environment_state"] = torch.randn(2, 4)
    _, terms = model(batch)
    assert "aux_env" in terms and terms["aux_env"] > 0
    model.zero_grad()
    terms["aux_env"].backward()
    stems = model.backbone.stems.parameters()
    stem_grad = sum(p.grad.abs().sum() for p in stems if p.grad is not None)
    assert stem_grad > 0  # the scene-state target reaches the image stems
    assert all(p.grad is None or not p.grad.any() for p in model.expert.parameters())
    # serving batches carry no scene state: sampling does not need it
    del batch["observation.environment_state"]
    v = model.velocity_fn(batch)(*noisy_actions(model))
    assert v.shape == (2, model.config.chunk_length, model.config.action_dim)


def test_aux_env_state_is_off_without_a_scene_state():
    """The scene-state loss is on by default, and off for a dataset without a scene state
    (a real robot's, say), so the defaults train on any dataset."""
    assert tiny_config(env_state_dim=4).aux_env_state == 1.0
    config = tiny_config(aux_env_state=1.0)  # env_state_dim 0
    assert config.aux_env_state == 0.0
    model = VLA(config)
    assert not hasattr(model, "aux_head")
    loss, terms = model(make_batch(model))
    assert "aux_env" not in terms and torch.isfinite(loss)


def backward_flow_loss(model: VLA) -> dict[str, torch.Tensor]:
    """A batch with a 4-number scene state; the flow loss alone back-propagated on it."""
    batch = make_batch(model)
    batch["observation.environment_state"] = torch.randn(2, 4)
    _, terms = model(batch)
    model.zero_grad()
    terms["fm"].backward()
    return batch


def test_expert_scene_reads_the_predicted_scene_state_and_needs_the_scene_loss():
    """With expert_scene the expert's velocity depends on what the aux head predicts (and the
    aux head is trained by the scene-state loss only), also when serving without a scene state."""
    with pytest.raises(ValueError, match="expert_scene"):
        tiny_config(expert_scene=True)  # no scene state, so no scene-state loss to predict it
    model = make_model(aux_env_state=1.0, env_state_dim=4, expert_scene=True)
    batch = backward_flow_loss(model)
    assert all(p.grad is None or not p.grad.any() for p in model.aux_head.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.expert.scene.parameters())
    del batch["observation.environment_state"]
    x_t, tau = noisy_actions(model)
    v = model.velocity_fn(batch)(x_t, tau)
    with torch.no_grad():
        model.aux_head[1].bias += 1.0  # another predicted scene, the same images
    assert not torch.allclose(model.velocity_fn(batch)(x_t, tau), v)


def test_the_default_vla_reads_the_scene_where_the_dataset_has_one_and_acts_on_any_dataset():
    """The defaults (the CPU recipe) pick the scene-reading expert with its teacher only where
    the backbone learns a scene state; a dataset without one gets the transformer expert."""
    scene = VLAConfig(env_state_dim=9)
    assert (scene.expert, scene.expert_scene_teacher, scene.aux_env_state) == (
        "scene_mixer",
        1.0,
        1.0,
    )
    assert (scene.vision, scene.instruction_keypoints, scene.fast_loss) == ("keypoints", 4, False)
    plain = VLAConfig()  # e.g. a real robot's recording: no observation.environment_state
    assert (plain.expert, plain.expert_scene_teacher, plain.aux_env_state) == (
        "transformer",
        0.0,
        0.0,
    )
    model = VLA(
        replace(plain, image_size=(32, 32), width=32, num_heads=2, depth=1, expert_width=16)
    )
    batch = make_batch(model)
    loss, terms = model(batch)
    assert torch.isfinite(loss) and set(terms) == {"loss", "fm"}  # flow only
    assert VLAConfig(env_state_dim=9, aux_env_state=0.0).expert == "transformer"


def test_expert_scene_teacher_feeds_the_true_scene_state_in_training_only():
    """With expert_scene_teacher = 1 the training expert reads the true scene state (its loss
    no longer depends on the aux head's prediction); at inference it reads the prediction."""
    assert tiny_config(env_state_dim=4, expert_scene_teacher=0.5).expert_scene_teacher == 0.0
    # (the transformer expert reads no scene state: nothing to teacher-force)
    with pytest.raises(ValueError, match="expert_scene_teacher"):
        tiny_config(aux_env_state=1.0, env_state_dim=4, expert_scene=True, expert_scene_teacher=2)
    model = make_model(
        aux_env_state=1.0, env_state_dim=4, expert_scene=True, expert_scene_teacher=1.0
    )
    batch = make_batch(model)
    batch["observation.environment_state"] = torch.randn(2, 4)
    noise, tau = torch.randn(2, model.config.chunk_length, 2), torch.full((2,), 0.5)
    torch.manual_seed(0)
    fm = model(batch, noise, tau)[1]["fm"]
    with torch.no_grad():
        model.aux_head[1].bias += 1.0  # another prediction: the teacher-forced loss ignores it
    torch.manual_seed(0)
    assert torch.allclose(model(batch, noise, tau)[1]["fm"], fm)
    batch["observation.environment_state"] += 1.0  # another true scene: the loss reads it
    torch.manual_seed(0)
    assert not torch.allclose(model(batch, noise, tau)[1]["fm"], fm)
    model.eval()  # inference reads the prediction (and needs no scene state)
    del batch["observation.environment_state"]
    x_t, tau = noisy_actions(model)
    v = model.velocity_fn(batch)(x_t, tau)
    with torch.no_grad():
        model.aux_head[1].bias += 1.0
    assert not torch.allclose(model.velocity_fn(batch)(x_t, tau), v)


def test_scene_mixer_expert_acts_on_the_predicted_scene_state_only():
    """expert=scene_mixer: the velocity depends on the predicted scene state and the
    instruction, not on the images otherwise; the flow loss trains no backbone weight; the
    velocity has a gradient w.r.t. the noisy actions (RTC's VJP)."""
    with pytest.raises(ValueError, match="expert=scene_mixer"):
        tiny_config(expert="scene_mixer")  # no scene state to predict
    with pytest.raises(ValueError, match="expert="):
        tiny_config(expert="mlp")
    model = make_model(aux_env_state=1.0, env_state_dim=4, expert="scene_mixer")
    batch = backward_flow_loss(model)
    assert all(p.grad is None or not p.grad.any() for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.expert.parameters())
    model.eval()
    with torch.no_grad():  # as if trained: the mixer's modulation starts at zero
        for p in model.expert.parameters():
            p.add_(0.1 * torch.randn_like(p))
    del batch["observation.environment_state"]
    x_t, tau = noisy_actions(model)
    v = model.velocity_fn(batch)(x_t, tau)
    other = make_batch(model, seed=1)  # other images, same instruction and state
    other["observation.state"] = batch["observation.state"]
    with torch.no_grad():  # the same predicted scene for the other images: the same velocity
        model.aux_head[1].weight.zero_()
    v0 = model.velocity_fn(batch)(x_t, tau)
    assert torch.allclose(model.velocity_fn(other)(x_t, tau), v0)
    assert not torch.allclose(v0, v)
    words = dict(
        batch, lang_tokens=batch["lang_tokens"].flip(0), lang_mask=batch["lang_mask"].flip(0)
    )
    assert not torch.allclose(model.velocity_fn(words)(x_t, tau), v0)
    x = x_t.clone().requires_grad_(True)
    model.velocity_fn(batch)(x, tau).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_flow_samples_reuse_one_backbone_pass_for_k_noise_draws():
    """flow_samples = 2 with each example's noise and time drawn twice alike gives the loss of
    one draw; with different draws the examples' rows are the k samples of the same cache."""
    with pytest.raises(ValueError, match="flow_samples"):
        tiny_config(flow_samples=0)
    one, two = make_model(), make_model(flow_samples=2)
    batch = make_batch(one)
    noise, tau = noisy_actions(one)
    fm = one(batch, noise, tau)[1]["fm"]
    loss = two(batch, noise.repeat_interleave(2, 0), tau.repeat_interleave(2, 0))[1]["fm"]
    assert torch.allclose(loss, fm)
    loss, terms = two(batch)  # drawn: 2 B rows
    assert torch.isfinite(loss) and torch.isfinite(terms["fast_ce"])
