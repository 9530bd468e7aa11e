"""The VLA on a Hugging Face VLM backbone: a tiny random Idefics3 (SmolVLM's architecture).

Shapes and grouped-query attention, knowledge insulation, the custom attention mask inside
the transformers decoder, sampling, loading a model folder and checkpoints, all offline.
"""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from policies.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from policies.flow import euler_sample
from policies.hf_backbone import HFBackbone
from policies.normalize import Normalizer
from policies.vla import VLA, VLAConfig

CAMERAS = ("observation.images.front", "observation.images.wrist")
WORDS = ("<unk>", "pick", "the", "red", "cube", "go", "left")


def hf_config() -> Idefics3Config:
    """2 text layers of width 64 with 4 query heads sharing 2 K/V heads (head_dim 16); a
    1-layer vision tower on 32x32 inputs (the 96x96 cameras are resized), 4 tokens an image."""
    return Idefics3Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        text_config=dict(
            model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
            max_position_embeddings=256,
        ),
        scale_factor=2,
        image_token_id=299,
    )  # fmt: skip


def vla_config(**overrides) -> VLAConfig:
    values = dict(
        backbone="hf", image_keys=CAMERAS, image_size=(96, 96), state_dim=3, action_dim=2,
        chunk_length=6, expert_width=16, max_lang_tokens=8, fast_vocab_size=20, max_fast_tokens=5,
        fast_loss=True, insulation=True,  # knowledge insulation: a pretrained backbone's setting
    )  # fmt: skip
    values.update(overrides)
    return VLAConfig(**values)


def make_model(attention: str = "sdpa", **overrides) -> VLA:
    torch.manual_seed(0)
    config = vla_config(**overrides)
    return VLA(config, HFBackbone.from_config(config, hf_config(), attention=attention))


def make_batch(model: VLA, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    B = 2
    lang_tokens, lang_mask = model.tokenize_instructions(["pick", "go left"])
    fast_mask = torch.ones(B, cfg.max_fast_tokens, dtype=torch.bool)
    fast_mask[1, 3:] = False
    batch = {key: torch.rand(B, 3, *cfg.image_size, generator=g) for key in CAMERAS}
    return batch | {
        "observation.state": torch.randn(B, cfg.state_dim, generator=g),
        "action": torch.randn(B, cfg.chunk_length, cfg.action_dim, generator=g),
        "lang_tokens": lang_tokens,
        "lang_mask": lang_mask,
        "fast_tokens": torch.randint(0, cfg.fast_vocab_size, (B, cfg.max_fast_tokens), generator=g),
        "fast_mask": fast_mask,
    }


def noisy_actions(model: VLA, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return torch.randn(2, cfg.chunk_length, cfg.action_dim, generator=g), torch.rand(2, generator=g)


def word_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


@pytest.fixture
def model_folder(tmp_path):
    """A SmolVLM-like model folder: weights of the full generation model, a tokenizer and an
    image processor config, as `hf download` leaves them."""
    torch.manual_seed(3)
    folder = tmp_path / "tiny-idefics3"
    Idefics3ForConditionalGeneration(hf_config()).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    stats = {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4]}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))
    return folder


def test_shapes_and_grouped_query_attention():
    model = make_model()
    backbone = model.backbone
    assert (backbone.num_layers, backbone.num_heads, backbone.head_dim) == (2, 2, 16)
    assert len(model.expert.blocks) == 2 and model.expert.blocks[0].num_heads == 2
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, logits = model.joint_forward(batch, x_t, tau)
    assert velocity.shape == (2, 6, 2)
    assert logits.shape == (2, 5, 20)
    cache = model.encode_prefix(batch)
    P = 2 * 4 + 8 + 1  # 4 image tokens per camera, 8 language tokens, 1 state token
    assert [k.shape for k in cache.keys] == [(2, 2, P, 16)] * 2  # (B, num_kv_heads, P, hd)
    assert [v.shape for v in cache.values] == [(2, 2, P, 16)] * 2
    loss, terms = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(terms) == {"loss", "fm", "fast_ce"}


def test_insulation_stops_flow_gradients_into_the_backbone():
    for insulation in (True, False):
        model = make_model(insulation=insulation)
        _, terms = model(make_batch(model))
        terms["fm"].backward()
        grads = {n: p.grad for n, p in model.backbone.named_parameters()}
        reached = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
        if insulation:
            assert not reached  # exactly zero: no flow gradient reaches any backbone weight
        else:  # the pretrained model's own weights, vision tower included, learn from FM
            assert any(n.startswith("vlm.vision_model.") for n in reached)
            assert any(n.startswith("vlm.text_model.layers.") for n in reached)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())


def test_fast_and_expert_tokens_do_not_see_each_other():
    model = make_model()
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, logits = model.joint_forward(batch, x_t, tau)

    other_fast = dict(batch, fast_tokens=(batch["fast_tokens"] + 7) % 20)
    velocity2, logits2 = model.joint_forward(other_fast, x_t, tau)
    torch.testing.assert_close(velocity2, velocity, rtol=0, atol=1e-6)
    assert not torch.allclose(logits2, logits)

    x_t2, tau2 = noisy_actions(model, seed=2)
    velocity3, logits3 = model.joint_forward(batch, x_t2, tau2)
    torch.testing.assert_close(logits3, logits, rtol=0, atol=1e-6)
    assert not torch.allclose(velocity3, velocity)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_decoder_honours_the_projects_mask(attention):
    model = make_model(attention)
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    cache = model.encode_prefix(batch)
    # Bidirectional prefix: the first image token's layer-2 keys read the last prefix token
    # (the state), which a causal decoder would hide from it.
    moved_state = dict(batch, **{"observation.state": batch["observation.state"] + 1.0})
    assert not torch.allclose(
        model.encode_prefix(moved_state).keys[1][:, :, 0], cache.keys[1][:, :, 0]
    )
    # Language padding is read by nobody and does not advance positions: "pick" padded to 8
    # tokens gives the keys of "pick" unpadded (4 tokens) at every valid token.
    first = {k: v[:1] for k, v in batch.items()}
    unpadded = dict(
        first, lang_tokens=first["lang_tokens"][:, :4], lang_mask=first["lang_mask"][:, :4]
    )
    padded_cache, unpadded_cache = model.encode_prefix(first), model.encode_prefix(unpadded)
    valid = padded_cache.valid[0]
    assert valid.sum() == unpadded_cache.valid.sum() < len(valid)
    for k, k2 in zip(padded_cache.keys, unpadded_cache.keys, strict=True):
        torch.testing.assert_close(k[:, :, valid], k2, rtol=1e-5, atol=1e-5)
    # Causal FAST: changing the input at position 3 (FAST token 2) leaves positions 0..2.
    _, logits = model.joint_forward(batch, x_t, tau)
    tokens = batch["fast_tokens"].clone()
    tokens[:, 2] = (tokens[:, 2] + 5) % 20
    _, logits2 = model.joint_forward(dict(batch, fast_tokens=tokens), x_t, tau)
    torch.testing.assert_close(logits2[:, :3], logits[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(logits2[:, 3:], logits[:, 3:])


def test_sdpa_and_eager_attention_agree():
    sdpa, eager = make_model("sdpa"), make_model("eager")
    batch = make_batch(sdpa)
    x_t, tau = noisy_actions(sdpa)
    velocity, logits = sdpa.joint_forward(batch, x_t, tau)
    velocity2, logits2 = eager.joint_forward(batch, x_t, tau)
    torch.testing.assert_close(velocity2, velocity, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits2, logits, rtol=1e-5, atol=1e-5)


def test_prefix_cache_matches_the_full_forward():
    model = make_model()
    batch = make_batch(model)
    x_t, tau = noisy_actions(model)
    velocity, _ = model.joint_forward(batch, x_t, tau)
    cached = model.denoise_step(model.encode_prefix(batch), x_t, tau)
    torch.testing.assert_close(cached, velocity, rtol=1e-5, atol=1e-5)


def test_sampling_a_chunk():
    model = make_model().eval()
    batch = make_batch(model)
    noise, _ = noisy_actions(model)
    chunk = euler_sample(model.velocity_fn(batch), noise, model.config.num_steps)
    assert chunk.shape == (2, 6, 2) and torch.isfinite(chunk).all()
    assert torch.equal(euler_sample(model.velocity_fn(batch), noise, model.config.num_steps), chunk)


def test_byte_level_fallback_without_a_tokenizer(caplog):
    model = make_model()
    with caplog.at_level(logging.WARNING):
        tokens, mask = model.tokenize_instructions(["", "grüß", "a very long instruction"])
    assert tokens.shape == mask.shape == (3, 8)
    assert mask.sum(dim=1).tolist() == [0, 6, 8]  # "grüß" is 6 UTF-8 bytes
    assert tokens[1, :2].tolist() == [ord("g") + 1, ord("r") + 1]
    assert "truncated" in caplog.text
    assert torch.all(tokens[~mask] == 0)


def test_loads_a_model_folder_offline(model_folder):
    model = VLA(vla_config(hf_model=str(model_folder)))
    saved = load_file(model_folder / "model.safetensors")
    key = "model.text_model.layers.1.self_attn.k_proj.weight"
    torch.testing.assert_close(
        model.backbone.vlm.text_model.layers[1].self_attn.k_proj.weight, saved[key]
    )
    tokens, mask = model.tokenize_instructions(["pick the red cube", "go left"])
    assert tokens[0, :4].tolist() == [1, 2, 3, 4] and mask.sum(dim=1).tolist() == [4, 2]
    torch.testing.assert_close(model.backbone.image_mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    loss, _ = model(make_batch(model))
    assert torch.isfinite(loss)


def test_checkpoint_round_trip(model_folder, tmp_path):
    model = VLA(vla_config(hf_model=str(model_folder))).eval()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = ("observation.state", "action")
    normalizer = Normalizer({k: np.zeros(3 if k != "action" else 2) for k in names},
                            {k: np.ones(3 if k != "action" else 2) for k in names})  # fmt: skip
    folder = save_checkpoint(
        tmp_path / "run", 7, model=model, ema=ema, optimizer=torch.optim.AdamW(model.parameters()),
        normalizer=normalizer, fast_tokenizer=None, features={}, train_config={}, fps=30.0,
    )  # fmt: skip
    exported = export_checkpoint(folder, tmp_path / "exported")
    model_folder.rename(tmp_path / "moved")  # the original model folder is not needed any more
    batch = make_batch(model)
    noise, _ = noisy_actions(model)
    expected = euler_sample(model.velocity_fn(batch), noise, model.config.num_steps)
    for path in (folder, exported):
        loaded = load_checkpoint(path).model
        assert isinstance(loaded.backbone, HFBackbone)
        assert torch.equal(loaded.tokenize_instructions(["pick the cube"])[0],
                           model.tokenize_instructions(["pick the cube"])[0])  # fmt: skip
        torch.testing.assert_close(
            euler_sample(loaded.velocity_fn(batch), noise, loaded.config.num_steps), expected
        )


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="hf_model"):
        VLA(vla_config())
    with pytest.raises(FileNotFoundError, match="hf download"):
        VLA(vla_config(hf_model=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="backbone"):
        vla_config(backbone="paligemma")
    with pytest.raises(ValueError, match="attn_implementation"):
        HFBackbone.from_config(vla_config(), hf_config(), attention="flex_attention")
