"""The action expert: flow matching over an (H, action_dim) chunk, pi0 style.

Black et al. 2024, "pi0: A Vision-Language-Action Flow Model for General Robot Control",
Sec. IV: the noisy actions x_tau are H tokens with their own weights (the "action expert");
each expert block attends to the keys/values of the same backbone layer's prefix and to the
action tokens, bidirectionally. The flow time tau is embedded per token (sine-cosine, then an
MLP on [action embedding, time embedding]), so a per-token tau (B, H) works as well as a
per-example one (B,): training-time real-time chunking needs it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from policies.backbone import BYTE_VOCAB, PrefixCache
from policies.features import ENV_STATE, STATE
from policies.transformer import Block, init_weights

if TYPE_CHECKING:
    from policies.vla import VLAConfig


def sincos_embedding(
    tau: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> Tensor:
    """tau (B, H) -> (B, H, dim) sine-cosine features; periods as in pi0's time embedding."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=tau.device, dtype=tau.dtype)
    period = min_period * (max_period / min_period) ** fraction  # (dim / 2,)
    angle = tau[..., None] * (2.0 * math.pi / period)  # (B, H, dim / 2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ActionExpert(nn.Module):
    """x_tau (B, H, A), tau, prefix cache -> velocity (B, H, A)."""

    def __init__(self, config: VLAConfig, num_layers: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        E = config.expert_width
        self.action_in = nn.Linear(config.action_dim, E)
        self.time_mlp = nn.Sequential(nn.Linear(2 * E, E), nn.SiLU(), nn.Linear(E, E))
        self.pos = nn.Parameter(0.02 * torch.randn(config.chunk_length, E))
        # The instruction as a bag of its tokens, added to every action token: the expert's
        # queries can then depend on what was asked (which target) directly, instead of only
        # through attention to the language tokens. Its own embedding, so it takes nothing
        # from the (insulated) backbone.
        self.reads_instruction = config.expert_instruction and config.backbone == "small"
        self.instruction = None
        if self.reads_instruction:
            vocab = config.word_buckets if config.language == "words" else BYTE_VOCAB
            self.instruction = nn.EmbeddingBag(vocab, E, mode="mean", padding_idx=0)
        # expert_scene: the predicted scene state, the robot state and (with the bag above) the
        # instruction through one MLP, added to every action token: what a state policy reads,
        # so that picking the named target's slot is one nonlinear map, not attention hops
        self.scene = None
        if config.expert_scene:
            inputs = config.env_state_dim + config.state_dim + (E if self.reads_instruction else 0)
            self.scene = nn.Sequential(nn.Linear(inputs, 2 * E), nn.SiLU(), nn.Linear(2 * E, E))
        self.blocks = nn.ModuleList(
            Block(E, num_heads, head_dim, config.mlp_ratio) for _ in range(num_layers)
        )
        self.norm = nn.RMSNorm(E)
        self.action_out = nn.Linear(E, config.action_dim)
        self.apply(init_weights)

    def forward(self, cache: PrefixCache, x_t: Tensor, tau: Tensor, mask: Tensor) -> Tensor:
        """cache: prefix keys/values per layer; x_t: (B, H, A); tau: (B,) or (B, H);
        mask: (B, H, P + H) bool, the expert rows of the attention mask. Returns (B, H, A)."""
        B, H, _ = x_t.shape
        if tau.ndim == 1:
            tau = tau[:, None].expand(B, H)  # (B, H)
        a = self.action_in(x_t)  # (B, H, E)
        t = sincos_embedding(tau.to(a.dtype), a.shape[-1])  # (B, H, E)
        x = self.time_mlp(torch.cat([a, t], dim=-1)) + self.pos[:H]  # (B, H, E)
        if self.instruction is not None:
            if cache.instruction is None:
                raise ValueError("this expert reads the instruction: the cache carries none")
            words = self.instruction(cache.instruction)  # (B, E)
            x = x + words[:, None]
        if self.scene is not None:
            if cache.scene is None:
                raise ValueError("this expert reads the predicted scene state: the cache has none")
            inputs = [cache.scene] if self.instruction is None else [cache.scene, words]
            x = x + self.scene(torch.cat(inputs, dim=-1).to(x.dtype))[:, None]  # (B, 1, E)
        for block, k, v in zip(self.blocks, cache.keys, cache.values, strict=True):
            x, _, _ = block(x, mask, context=(k, v))
        return self.action_out(self.norm(x))  # (B, H, A)


class SceneMixerExpert(nn.Module):
    """An action expert that reads the scene state the backbone predicts, not its keys/values.

    ``expert="scene_mixer"``: the state-based flow policy's network (``policies.state_flow``,
    an MLP-mixer over the H action tokens) conditioned on the predicted scene state (the
    scene-state head's output, detached), the robot state and the instruction as a bag of the
    backbone's word ids. Pixels reach the actions only through the scene state, so the
    backbone's job is perception, learnt by the scene-state loss, and the expert's is the
    state policy's, learnt from the true scene state in training (``expert_scene_teacher``):
    each part learns what it would alone, neither waits for the other.
    """

    reads_instruction = True  # the cache must carry the instruction's token ids

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        from policies.state_flow import StateFlow, StateFlowConfig

        self.env_state_dim = config.env_state_dim
        self.flow = StateFlow(
            StateFlowConfig(
                state_dim=config.state_dim, env_state_dim=config.env_state_dim,
                action_dim=config.action_dim, chunk_length=config.chunk_length,
                width=config.expert_width, depth=config.depth,
            )
        )  # fmt: skip
        vocab = config.word_buckets if config.language == "words" else BYTE_VOCAB
        self.flow.words = nn.EmbeddingBag(vocab, config.expert_width, mode="mean", padding_idx=0)

    def forward(self, cache: PrefixCache, x_t: Tensor, tau: Tensor, mask: Tensor) -> Tensor:
        """As ``ActionExpert.forward``; ``mask`` is unused (no attention to the prefix)."""
        if cache.scene is None or cache.instruction is None:
            raise ValueError(
                "the scene_mixer expert reads the predicted scene state and the instruction: "
                "the cache carries no scene or no instruction"
            )
        E = self.env_state_dim
        obs = self.flow.encode(
            {STATE: cache.scene[:, E:], ENV_STATE: cache.scene[:, :E], "words": cache.instruction}
        )  # (B, C)
        return self.flow.velocity(obs, x_t, tau)  # (B, H, A)
