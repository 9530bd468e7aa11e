"""Image encoders of the VLA (patch tokens, spatial-softmax keypoints) and DrQ's shift."""

import pytest
import torch

from policies.vision import KeypointStem, random_shift
from policies.vla import VLA, VLAConfig


def test_keypoint_stem_gives_one_token_per_keypoint_that_follows_the_image():
    torch.manual_seed(0)
    stem = KeypointStem(width=32, num_keypoints=8)
    image = torch.zeros(1, 3, 96, 96)
    image[..., 10:20, 10:20] = 1.0
    moved = torch.zeros(1, 3, 96, 96)
    moved[..., 70:80, 60:70] = 1.0
    tokens = stem(torch.cat([image, moved]))
    assert tokens.shape == (2, 8, 32) and torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1])


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_keypoint_stride_sets_the_map_size_and_a_bad_one_is_refused(stride):
    stem = KeypointStem(width=16, num_keypoints=4, stride=stride)
    images = torch.rand(2, 3, 96, 96)
    assert stem(images).shape == (2, 4, 16)
    assert stem.features(images).shape[-2:] == (96 // stride, 96 // stride)
    with pytest.raises(ValueError, match="keypoint_stride=3"):
        VLAConfig(vision="keypoints", keypoint_stride=3)


def test_random_shift_keeps_shape_and_moves_content():
    torch.manual_seed(1)
    frames = torch.rand(4, 2, 3, 16, 16)
    shifted = random_shift(frames, 3)
    assert shifted.shape == frames.shape
    assert not torch.equal(shifted, frames)
    assert torch.equal(random_shift(frames, 0), frames)


@pytest.mark.parametrize("vision", ["patch", "keypoints"])
def test_vla_trains_with_either_encoder_and_augments_only_in_training(vision):
    torch.manual_seed(0)
    config = VLAConfig(vision=vision, width=32, depth=2, num_heads=2, expert_width=32,
                       chunk_length=8, fast_loss=False, insulation=False, augment_shift=4,
                       num_keypoints=4)  # fmt: skip
    model = VLA(config)
    B = 2
    batch = {k: torch.rand(B, 3, 96, 96) for k in config.image_keys}
    batch["observation.state"] = torch.zeros(B, 6)
    batch["action"] = torch.zeros(B, 8, 6)
    batch["lang_tokens"], batch["lang_mask"] = model.tokenize_instructions(["reach red"] * B)
    loss, _ = model(batch)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()  # no augmentation at inference: the same input encodes the same way
    a = model.encode_prefix(batch).keys[0]
    b = model.encode_prefix(batch).keys[0]
    assert torch.equal(a, b)


def test_unknown_vision_is_refused():
    with pytest.raises(ValueError, match="vision='resnet' is unknown"):
        VLAConfig(vision="resnet")


@pytest.mark.parametrize("vision", ["patch", "keypoints"])
def test_film_lets_the_instruction_change_the_image_tokens(vision):
    from policies.vision import make_stem

    torch.manual_seed(0)
    config = VLAConfig(image_size=(32, 32), patch_size=8, width=32, num_heads=2, vision=vision,
                       instruction_keypoints=0)  # fmt: skip  # FiLM alone reads the instruction
    stem = make_stem(config)
    images = torch.rand(2, 3, 32, 32)
    red, blue = torch.randn(1, 32).expand(2, 32), torch.randn(1, 32).expand(2, 32)
    torch.testing.assert_close(stem(images, red), stem(images, blue))  # identity at init
    (stem(images, red) - stem(images, blue).detach()).square().sum().backward()
    assert all(f.proj.weight.grad is not None for f in stem.films)  # FiLM is trained
    for film in stem.films:
        torch.nn.init.normal_(film.proj.weight, std=0.1)
    assert not torch.allclose(stem(images, red), stem(images, blue))
    with pytest.raises(ValueError, match="instruction embedding"):
        stem(images)
    plain = make_stem(VLAConfig(image_size=(32, 32), patch_size=8, width=32, num_heads=2,
                                vision=vision, film=False, instruction_keypoints=0))  # fmt: skip
    assert plain.films is None and plain(images).shape == stem(images, red).shape


def test_film_is_the_identity_in_a_fresh_model_and_the_expert_embedding_is_small():
    model = VLA(VLAConfig(image_size=(32, 32), patch_size=8, width=32, num_heads=2))
    films = [m for m in model.modules() if type(m).__name__ == "FiLM"]
    assert films and all(not f.proj.weight.any() and not f.proj.bias.any() for f in films)
    assert model.expert.instruction.weight.std() < 0.05  # GPT-2 init, like the other tables


def test_instruction_keypoints_go_where_the_instruction_points():
    """Two blobs, one red and one blue: an instruction keypoint whose filter an instruction
    sets to "red" lands on the red blob, and on the blue one under the other instruction;
    the ordinary keypoints do not depend on the instruction (no FiLM)."""
    from policies.vision import make_stem

    torch.manual_seed(0)
    config = VLAConfig(width=32, num_heads=2, vision="keypoints", keypoint_stride=2,
                       num_keypoints=4, instruction_keypoints=1, film=False)  # fmt: skip
    stem = make_stem(config)
    image = torch.zeros(1, 3, 96, 96)
    image[0, 0, 10:16, 10:16] = 1.0  # red, top left
    image[0, 2, 70:76, 70:76] = 1.0  # blue, bottom right
    # features: the first conv as the identity on two colour channels, the rest zero
    with torch.no_grad():
        stem.stem[0].weight.zero_()
        stem.stem[0].bias.zero_()
        stem.stem[0].weight[0, 0, 1, 1] = stem.stem[0].weight[1, 2, 1, 1] = 4.0
    red, blue = torch.zeros(1, 32), torch.zeros(1, 32)
    red[0, 0], blue[0, 1] = 1.0, 1.0
    with torch.no_grad():  # instruction i asks for colour channel i
        stem.query.proj.weight.zero_()
        stem.query.proj.weight[0, 0] = stem.query.proj.weight[1, 1] = 30.0
    positions = [stem.query(stem.features(image), cond) for cond in (red, blue)]  # the maps
    tokens_red, tokens_blue = stem(image, red), stem(image, blue)
    assert tokens_red.shape == (1, 5, 32)
    torch.testing.assert_close(tokens_red[:, :4], tokens_blue[:, :4])
    assert not torch.allclose(tokens_red[:, 4], tokens_blue[:, 4])
    for maps, blob in zip(positions, [range(5, 8), range(35, 38)], strict=True):
        row, col = divmod(int(maps[0, 0].flatten().argmax()), 48)  # on the 48 x 48 map
        assert row in blob and col in blob


def test_instruction_keypoints_start_with_unit_filters_and_need_keypoint_vision():
    model = VLA(VLAConfig(width=32, num_heads=2, vision="keypoints", instruction_keypoints=2))
    queries = [m for m in model.modules() if type(m).__name__ == "InstructionQuery"]
    assert len(queries) == 2  # one per camera
    assert all(0.1 < q.proj.weight.std() < 0.3 for q in queries)  # 1 / sqrt(32), not 0.02
    prefix, _ = model.backbone.embed_prefix(
        {**{k: torch.rand(1, 3, 96, 96) for k in model.config.image_keys},
         "observation.state": torch.zeros(1, 6),
         **dict(zip(("lang_tokens", "lang_mask"),
                    model.tokenize_instructions(["reach the red target"]), strict=True))}
    )  # fmt: skip
    assert prefix.shape[1] == 2 * (16 + 2) + 16 + 1  # cameras, language, state
    assert VLAConfig(vision="patch", instruction_keypoints=2).instruction_keypoints == 0
    with pytest.raises(ValueError, match="instruction_keypoints=-1 is a count"):
        VLAConfig(instruction_keypoints=-1)
