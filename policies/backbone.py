"""The VLA backbone: what the action expert and the FAST loss need from a vision-language model.

``Backbone`` is the interface; ``SmallBackbone`` is the default implementation, a small
transformer trained from scratch. The backbone reads a prefix of [image tokens per camera,
language tokens, one state token] with bidirectional attention (pi0, Black et al. 2024), and
optionally FAST action tokens after it, causally (pi0-FAST, Pertsch et al. 2025). It returns
the prefix keys and values of every layer (the cache the action expert attends to) and the
FAST next-token logits.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from policies.features import STATE
from policies.language import words
from policies.transformer import Block, init_weights
from policies.vision import FiLM, InstructionQuery, make_stem, random_shift

if TYPE_CHECKING:
    from policies.vla import VLAConfig

logger = logging.getLogger(__name__)

BYTE_VOCAB = 257  # language ids: UTF-8 byte + 1, and 0 for padding


@dataclass
class PrefixCache:
    """Keys and values of the prefix tokens at every backbone layer, computed once per input."""

    keys: list[Tensor]  # one (B, nh, P, hd) per layer
    values: list[Tensor]  # one (B, nh, P, hd) per layer
    valid: Tensor  # (B, P) bool, False at padding
    instruction: Tensor | None = None  # (B, L) long, the instruction's token ids (0 pads)
    readout: Tensor | None = None  # (B, C): the state token entering the last layer
    scene: Tensor | None = None  # (B, env + state): predicted scene state, robot state

    def detach(self) -> PrefixCache:
        """The same cache cut from the autograd graph: stop_grad(K, V) of knowledge insulation."""
        return PrefixCache(
            [k.detach() for k in self.keys],
            [v.detach() for v in self.values],
            self.valid,
            self.instruction,
            None if self.readout is None else self.readout.detach(),
            None if self.scene is None else self.scene.detach(),
        )

    def repeat(self, k: int) -> PrefixCache:
        """Each example's cache k times in a row (B -> B k): one backbone pass serving k
        flow-matching samples (``VLAConfig.flow_samples``)."""

        def rep(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat_interleave(k, dim=0)

        return PrefixCache(
            [rep(x) for x in self.keys], [rep(x) for x in self.values], rep(self.valid),
            rep(self.instruction), rep(self.readout), rep(self.scene),
        )  # fmt: skip


class Backbone(nn.Module, ABC):
    """A vision-language backbone the action expert can attend to, layer by layer.

    Implementations set ``num_layers``, ``num_heads`` and ``head_dim``: the expert has one block
    per backbone layer and reads that layer's prefix keys/values (B, num_heads, P, head_dim).
    """

    num_layers: int
    num_heads: int
    head_dim: int

    @abstractmethod
    def tokenize_instructions(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """Instructions -> (lang_tokens long (B, L), lang_mask bool (B, L))."""

    @abstractmethod
    def embed_prefix(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Images, language and state of a batch -> (prefix (B, P, C), valid bool (B, P))."""

    @abstractmethod
    def forward(
        self, prefix: Tensor, prefix_valid: Tensor, fast_tokens: Tensor | None, mask: Tensor
    ) -> tuple[PrefixCache, Tensor | None]:
        """Run the prefix (B, P, C) and the FAST tokens (B, F) (teacher-forced) under
        mask (B, P + F, P + F). Returns the prefix cache and the FAST logits (B, F, V), where
        logits[:, i] predicts fast_tokens[:, i]; None when fast_tokens is None."""


class SmallBackbone(Backbone):
    """The default backbone: a small transformer trained from scratch, CPU-friendly.

    Language is tokenized as hashed words (``language="words"``, policies/language.py: one
    token per word, so a colour is one token the expert can attend to) or as UTF-8 bytes
    (``"bytes"``: id = byte + 1); 0 pads. Either way any instruction, seen or not, has a
    tokenization and nothing needs fitting or saving.
    """

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.config = config
        self.num_layers, self.num_heads = config.depth, config.num_heads
        self.head_dim = config.width // config.num_heads
        C = config.width
        self.stems = nn.ModuleDict(
            {_module_name(key): make_stem(config) for key in config.image_keys}
        )
        vocab = config.word_buckets if config.language == "words" else BYTE_VOCAB
        self.lang_embed = nn.Embedding(vocab, C)
        self.lang_pos = nn.Parameter(0.02 * torch.randn(config.max_lang_tokens, C))
        self.state_proj = nn.Linear(config.state_dim, C)
        self.fast_embed = nn.Embedding(config.fast_vocab_size + 1, C)  # last id = BOS
        self.fast_pos = nn.Parameter(0.02 * torch.randn(config.max_fast_tokens, C))
        self.blocks = nn.ModuleList(
            Block(C, self.num_heads, self.head_dim, config.mlp_ratio) for _ in range(config.depth)
        )
        self.fast_norm = nn.RMSNorm(C)
        self.apply(init_weights)
        for module in self.modules():  # FiLM starts as the identity, queries at unit scale
            if isinstance(module, FiLM | InstructionQuery):
                module.reset_parameters()

    def tokenize_instructions(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        L = self.config.max_lang_tokens
        tokens = torch.zeros(len(instructions), L, dtype=torch.long)
        for i, text in enumerate(instructions):
            if self.config.language == "words":
                data = words(text, len(text), self.config.word_buckets)
            else:
                data = [b + 1 for b in text.encode("utf-8")]
            if len(data) > L:
                logger.warning(
                    "instruction %r is %d %s, truncated to max_lang_tokens=%d",
                    text, len(data), self.config.language, L,
                )  # fmt: skip
            tokens[i, : min(L, len(data))] = torch.tensor(data[:L], dtype=torch.long)
        return tokens, tokens != 0

    def embed_prefix(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        images, lang_tokens, lang_mask, state = read_prefix_inputs(batch, self.config)
        if self.training and self.config.augment_shift > 0:
            images = [random_shift(x, self.config.augment_shift) for x in images]
        words = self.lang_embed(lang_tokens)  # (B, L, C)
        cond = None
        if self.config.film or self.config.instruction_keypoints:
            # the instruction, mean-pooled, conditions the image stems
            weights = lang_mask[..., None].to(words.dtype)
            cond = (words * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        parts = [
            self.stems[_module_name(k)](x, cond)
            for k, x in zip(self.config.image_keys, images, strict=True)
        ]
        parts.append(words + self.lang_pos[: lang_tokens.shape[1]])
        parts.append(self.state_proj(state)[:, None])  # (B, 1, C)
        prefix = torch.cat(parts, dim=1)  # (B, P, C)
        return prefix, valid_prefix_tokens(prefix, lang_mask)

    def forward(
        self, prefix: Tensor, prefix_valid: Tensor, fast_tokens: Tensor | None, mask: Tensor
    ) -> tuple[PrefixCache, Tensor | None]:
        P = prefix.shape[1]
        x = prefix
        if fast_tokens is not None:
            x = torch.cat([prefix, self._embed_fast(fast_tokens)], dim=1)  # (B, P + F, C)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            if i == len(self.blocks) - 1:  # what the expert's last layer reads: its K, V
                readout = x[:, P - 1]  # (B, C), the state token (the prefix's last)
            x, k, v = block(x, mask)
            keys.append(k[:, :, :P])  # (B, nh, P, hd)
            values.append(v[:, :, :P])
        cache = PrefixCache(keys, values, prefix_valid, readout=readout)
        if fast_tokens is None:
            return cache, None
        head = self.fast_embed.weight[: self.config.fast_vocab_size]  # (V, C), tied embedding
        return cache, self.fast_norm(x[:, P:]) @ head.T  # (B, F, V)

    def _embed_fast(self, fast_tokens: Tensor) -> Tensor:
        inputs = fast_inputs(fast_tokens, self.config)  # (B, F)
        return self.fast_embed(inputs) + self.fast_pos[: inputs.shape[1]]  # (B, F, C)


def read_prefix_inputs(
    batch: dict[str, Tensor], config: VLAConfig
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """The checked prefix inputs of a batch: ([images (B, 3, h, w) per camera], lang_tokens
    (B, L), lang_mask (B, L), state (B, S)), or an error saying what to change."""
    images = []
    for key in config.image_keys:
        x = get_feature(batch, key)
        expected = (3, *config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{key} has shape {tuple(x.shape)}, the policy expects (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) floats in [0, 1]: resize the images or "
                f"retrain with image_size={list(config.image_size)}"
            )
        images.append(x)
    lang_tokens, lang_mask = get_feature(batch, "lang_tokens"), get_feature(batch, "lang_mask")
    if lang_tokens.shape[1] > config.max_lang_tokens:
        raise ValueError(
            f"lang_tokens has {lang_tokens.shape[1]} tokens, more than max_lang_tokens="
            f"{config.max_lang_tokens}: build them with model.tokenize_instructions"
        )
    state = get_feature(batch, STATE)
    if state.shape[-1] != config.state_dim:
        raise ValueError(
            f"observation.state has shape {tuple(state.shape)}, the policy expects "
            f"(B, {config.state_dim}): set state_dim={state.shape[-1]} and retrain"
        )
    return images, lang_tokens, lang_mask, state


def valid_prefix_tokens(prefix: Tensor, lang_mask: Tensor) -> Tensor:
    """valid (B, P) of a prefix [image tokens, language (B, L), one state token]: False at
    language padding only."""
    B, P = prefix.shape[:2]
    valid = torch.ones(B, P, dtype=torch.bool, device=prefix.device)
    valid[:, P - 1 - lang_mask.shape[1] : P - 1] = lang_mask
    return valid


def fast_inputs(fast_tokens: Tensor, config: VLAConfig) -> Tensor:
    """Teacher forcing: FAST tokens (B, F) -> inputs [BOS, t_1, ..., t_{F-1}] (B, F), so
    position i predicts t_{i+1}; BOS is id fast_vocab_size."""
    B, num_fast = fast_tokens.shape
    if num_fast > config.max_fast_tokens:
        raise ValueError(
            f"fast_tokens has {num_fast} tokens, more than max_fast_tokens="
            f"{config.max_fast_tokens}: pad/truncate with FastTokenizer.encode_padded"
        )
    if fast_tokens.numel() and int(fast_tokens.max()) >= config.fast_vocab_size:
        raise ValueError(
            f"fast_tokens has id {int(fast_tokens.max())}, not below fast_vocab_size="
            f"{config.fast_vocab_size}: set fast_vocab_size >= the tokenizer's vocab_size"
        )
    bos = torch.full((B, 1), config.fast_vocab_size, device=fast_tokens.device)
    return torch.cat([bos, fast_tokens[:, :-1]], dim=1)  # (B, F)


def _module_name(key: str) -> str:
    """A batch key such as observation.images.front as a module name (no dots allowed)."""
    return key.replace(".", "_")


def get_feature(batch: dict[str, Tensor], key: str) -> Tensor:
    """batch[key], or an error naming the missing key and the keys there are."""
    if key not in batch:
        raise KeyError(f"the batch has no {key!r} (it has {sorted(batch)}); the policy needs it")
    return batch[key]
