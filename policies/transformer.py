"""The transformer block shared by the VLA backbone and its action expert.

A pre-norm block (RMSNorm, multi-head attention, GELU MLP) as in GPT-2 / nanoGPT, with one
twist from pi0 (Black et al. 2024, Sec. IV): attention projects to num_heads * head_dim
whatever the block's width, so blocks of different widths (the backbone and the narrower
action expert) can attend to each other's keys and values ("mixture of experts" layout).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """x (B, N, C) attends to [context keys/values, its own keys/values] under a boolean mask."""

    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner, hidden = num_heads * head_dim, int(mlp_ratio * width)
        self.norm1 = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, width, bias=False)
        self.norm2 = nn.RMSNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )

    def forward(
        self, x: Tensor, mask: Tensor, context: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One block.

        x: (B, N, C) tokens; mask: (B, N, P + N) bool, True where a query may read a key;
        context: keys and values (B, nh, P, hd) of P other tokens, placed before x's own.
        Returns the new x (B, N, C) and x's keys and values (B, nh, N, hd).
        """
        B, N, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hd)
        keys, values = k, v
        if context is not None:
            keys = torch.cat([context[0], k], dim=2)  # (B, nh, P + N, hd)
            values = torch.cat([context[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
        y = y.transpose(1, 2).reshape(B, N, -1)  # (B, N, nh * hd)
        x = x + self.proj(y)
        x = x + self.mlp(self.norm2(x))
        return x, k, v


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights for linear and embedding layers, zero biases."""
    if isinstance(module, nn.Linear | nn.Embedding | nn.EmbeddingBag):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
