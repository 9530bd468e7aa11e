"""Image encoders of the VLA backbone, and the training-time image augmentation.

``vision="patch"``: ``PatchStem``, a small convolutional stem that patchifies each camera into
(h / p) * (w / p) tokens. ``vision="keypoints"``: ``KeypointStem``, a ResNet-style stem with
GroupNorm ending in a spatial softmax (Levine et al. 2016; the encoder of robomimic and
diffusion policy), one token per keypoint: where in the image each learned feature is, and
how strongly. Keypoints are few (K per camera), so the transformer runs on far fewer tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from policies.vla import VLAConfig

VISION = ("patch", "keypoints")
KEYPOINT_STRIDES = (2, 4, 8)  # vision=keypoints: keypoint map size = image size / stride
# log of the initial spatial-softmax sharpness: at 1 (log 0) the softmax starts near uniform
# and keypoints hardly move; at 10 a target is localised about twice as fast (measured)
KEYPOINT_LOG_TEMPERATURE = 2.3


def resize_with_pad(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Camera images float (B, 3, h, w) in [0, 1] -> (B, 3, H, W) for ``size`` = (H, W).

    The policy's one image preprocessing, in training and serving alike (pi0's and SmolVLA's
    ``resize_with_pad``, with openpi's centred padding): the image is scaled to fit inside
    (H, W) keeping its aspect ratio (bilinear, antialiased when shrinking), then padded with
    black on both sides of the short dimension. Images already (H, W) are returned unchanged,
    so a policy trained at its cameras' own size sees exactly what it saw before.
    """
    h, w = images.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return images
    ratio = max(h / H, w / W)
    rh, rw = max(1, min(H, round(h / ratio))), max(1, min(W, round(w / ratio)))
    resized = F.interpolate(
        images.float(), size=(rh, rw), mode="bilinear", align_corners=False,
        antialias=ratio > 1,
    ).clamp(0.0, 1.0)  # fmt: skip  # (B, 3, rh, rw)
    top, left = (H - rh) // 2, (W - rw) // 2
    return F.pad(resized, (left, W - rw - left, top, H - rh - top))  # (B, 3, H, W)


def random_shift(frames: Tensor, pad: int) -> Tensor:
    """DrQ's augmentation (Kostrikov et al. 2021): each sample's frames (B, ..., 3, h, w) shift
    by one random offset of up to ``pad`` pixels, edges repeated."""
    shape = frames.shape
    B, h, w = shape[0], shape[-2], shape[-1]
    flat = frames.reshape(B, -1, h, w).float()
    padded = F.pad(flat, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B)).tolist()
    out = torch.stack([padded[b, :, dy[b] : dy[b] + h, dx[b] : dx[b] + w] for b in range(B)])
    return out.view(shape)


class FiLM(nn.Module):
    """x (B, ch, h, w) -> x * (1 + gamma(cond)) + beta(cond), cond (B, C); identity at init."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity: call again after a model-wide re-initialisation."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


def _films(cond_dim: int | None, channels: tuple[int, ...]) -> nn.ModuleList | None:
    return None if cond_dim is None else nn.ModuleList(FiLM(cond_dim, c) for c in channels)


def _check_cond(built: dict[str, bool], cond: Tensor | None) -> None:
    """A stem that uses the instruction (any of ``built``'s parts) needs ``cond``, one that
    does not refuses it."""
    if any(built.values()) != (cond is not None):
        parts = " and ".join(f"{name}={used}" for name, used in built.items())
        raise ValueError(
            f"this stem was built with {parts} but called "
            f"{'without' if cond is None else 'with'} an instruction embedding"
        )


class InstructionQuery(nn.Module):
    """Feature maps x (B, D, h, w) and an instruction embedding cond (B, C) -> Kq maps
    (B, Kq, h, w): the dot product of each pixel's features with Kq filters made from the
    instruction (a normalised ``cond`` through one linear layer), scaled by 1 / sqrt(D)."""

    def __init__(self, cond_dim: int, count: int, channels: int) -> None:
        super().__init__()
        self.count, self.channels = count, channels
        self.norm = nn.RMSNorm(cond_dim)
        self.proj = nn.Linear(cond_dim, count * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit-variance filters for a unit instruction: call again after a model-wide
        re-initialisation (the transformer's N(0, 0.02) would start them near zero)."""
        nn.init.normal_(self.proj.weight, std=self.proj.in_features**-0.5)
        nn.init.zeros_(self.proj.bias)

    def filters(self, cond: Tensor) -> Tensor:
        """The (B, Kq, D) filters of the instruction, scaled by 1 / sqrt(D)."""
        filters = self.proj(self.norm(cond)).view(-1, self.count, self.channels)
        return filters * self.channels**-0.5

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return torch.einsum("bkd,bdhw->bkhw", self.filters(cond), x)


class PatchStem(nn.Module):
    """One camera's images (B, 3, h, w) in [0, 1] -> patch tokens (B, h * w / p^2, C).

    Two stride-2 3x3 convolutions, then a (p / 4)-strided convolution that patchifies (a
    small convolutional stem helps a ViT trained from scratch: Xiao et al. 2021, "Early
    Convolutions Help Transformers See Better"), plus a learned position embedding.
    """

    def __init__(
        self, width: int, patch_size: int, num_patches: int, cond_dim: int | None = None
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(  # one Sequential: its parameter names are the checkpoints'
            nn.Conv2d(3, 32, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, width, kernel_size=patch_size // 4, stride=patch_size // 4),
        )
        self.films = _films(cond_dim, (32, 64))
        self.pos = nn.Parameter(0.02 * torch.randn(num_patches, width))

    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        _check_cond({"film": self.films is not None}, cond)
        x = 2.0 * images - 1.0
        for i in range(2):  # conv, FiLM, GELU
            x = self.convs[2 * i](x)
            if self.films is not None:
                x = self.films[i](x, cond)
            x = self.convs[2 * i + 1](x)
        x = self.convs[4](x)  # (B, C, h / p, w / p): the patches
        return x.flatten(2).transpose(1, 2) + self.pos  # (B, h * w / p^2, C)


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv, GroupNorm, GELU (GroupNorm: batch statistics would differ at inference)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.GELU(),
    )


class KeypointStem(nn.Module):
    """One camera's images (B, 3, h, w) in [0, 1] -> K keypoint tokens (B, K, C).

    A stride-2 conv, then stages of GroupNorm conv blocks (a conv, stride 2 while the maps are
    larger than h / ``stride``, and a residual conv) down to maps of h / ``stride``, a 1x1
    conv to K feature maps, and a spatial softmax: keypoint k is the softmax-weighted mean
    pixel position (x_k, y_k) of map k; its token embeds (x_k, y_k, max activation) and adds a
    learned embedding of k.

    ``stride`` 8 is robomimic's depth; 4 keeps small objects (a 5-pixel target at 96 x 96)
    more than a map cell wide and gives each keypoint less context to memorise a scene by,
    so it localises held-out scenes better on few demonstrations (``docs/training.md``).
    """

    def __init__(
        self,
        width: int,
        num_keypoints: int,
        cond_dim: int | None = None,
        stride: int = 8,
        instruction_keypoints: int = 0,
        film: bool = True,
    ) -> None:
        super().__init__()
        if stride not in KEYPOINT_STRIDES:
            raise ValueError(f"keypoint stride={stride} is not one of {KEYPOINT_STRIDES}")
        if instruction_keypoints and cond_dim is None:
            raise ValueError("instruction_keypoints need the instruction: pass cond_dim")
        stages = KEYPOINT_STRIDES.index(stride)  # 2 -> 0 ... 8 -> 2 stride-2 stages
        channels = 64 if stages else 32
        self.films = _films(cond_dim if film else None, (32,) + (64,) * stages)
        self.stem = conv_block(3, 32, 2)  # (B, 32, h / 2, w / 2)
        self.down = nn.ModuleList(conv_block(32 if i == 0 else 64, 64, 2) for i in range(stages))
        self.residual = nn.ModuleList(conv_block(64, 64, 1) for _ in range(stages))
        self.keypoints = nn.Conv2d(channels, num_keypoints, 1)
        # instruction keypoints: their 1x1 filters are a function of the instruction, so each
        # is where the feature the instruction names is (CLIPort's language-conditioned
        # attention, reduced to a spatial softmax)
        self.query = (
            InstructionQuery(cond_dim, instruction_keypoints, channels)
            if instruction_keypoints
            else None
        )
        # log of the softmax sharpness: sharp enough at init that each keypoint moves
        self.temperature = nn.Parameter(torch.tensor(KEYPOINT_LOG_TEMPERATURE))
        self.embed = nn.Linear(3, width)
        self.identity = nn.Parameter(
            0.02 * torch.randn(num_keypoints + instruction_keypoints, width)
        )

    def features(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        """The feature maps (B, D, h / stride, w / stride) the keypoints are read from."""
        x = self.stem(2.0 * images - 1.0)
        if self.films is not None:
            x = self.films[0](x, cond)
        for i, (down, residual) in enumerate(zip(self.down, self.residual, strict=True)):
            x = down(x)
            x = x + residual(x)  # (B, 64, h', w')
            if self.films is not None:
                x = self.films[i + 1](x, cond)
        return x

    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        built = {"film": self.films is not None, "instruction_keypoints": self.query is not None}
        _check_cond(built, cond)
        x = self.features(images, cond)
        # the 1x1 conv to K maps and the instruction's Kq filters as one batched matmul over
        # the flattened maps (the same sums as the conv; on a CPU the stem's forward and
        # backward take a third less time than with the conv)
        hh, ww = x.shape[-2:]
        filters = self.keypoints.weight.flatten(1).expand(len(x), -1, -1)  # (B, K, D)
        bias = self.keypoints.bias
        if self.query is not None:
            filters = torch.cat([filters, self.query.filters(cond)], dim=1)  # (B, K + Kq, D)
            bias = torch.cat([bias, bias.new_zeros(self.query.count)])
        maps = torch.bmm(filters, x.flatten(2)) + bias[:, None]  # (B, K + Kq, h' w')
        attention = (maps * self.temperature.exp()).softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, hh, device=maps.device, dtype=maps.dtype)
        xs = torch.linspace(-1.0, 1.0, ww, device=maps.device, dtype=maps.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)  # (h' w', 2)
        position = attention @ grid  # (B, K, 2): the softmax-weighted mean (x, y)
        strength = maps.amax(dim=-1, keepdim=True)  # (B, K, 1)
        features = torch.cat([position, strength], dim=-1)  # (B, K, 3)
        return self.embed(features) + self.identity  # (B, K, C)


def make_stem(config: VLAConfig) -> nn.Module:
    """The image encoder ``config.vision`` names, for one camera."""
    if config.vision == "keypoints":
        conditioned = config.film or config.instruction_keypoints > 0
        return KeypointStem(
            config.width, config.num_keypoints, config.width if conditioned else None,
            config.keypoint_stride, config.instruction_keypoints, config.film,
        )  # fmt: skip
    cond_dim = config.width if config.film else None
    h, w = config.image_size
    num_patches = (h // config.patch_size) * (w // config.patch_size)
    return PatchStem(config.width, config.patch_size, num_patches, cond_dim)
