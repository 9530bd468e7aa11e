"""A pretrained Hugging Face vision-language model as the VLA backbone (SmolVLM / Idefics3).

pi0 and pi0.5-KI start from a pretrained VLM (PaliGemma) rather than from scratch; this is
the same move with the SmolVLM family (Marafioti et al. 2025, "SmolVLM: Redefining small and
efficient multimodal models"; architecture Idefics3, Laurençon et al. 2024), as in SmolVLA.
Its parts, loaded with ``transformers``:

- vision encoder (SigLIP) + connector (pixel shuffle, linear): each camera image, resized to
  the encoder's square input and normalised with the model's mean/std, becomes
  (image_size / patch_size)^2 / scale_factor^2 image tokens (64 for SmolVLM-256M);
- the text decoder (a Llama) runs the prefix [image tokens, language, state] and the FAST
  tokens under the project's attention mask (``policies/vla.py``), passed as a custom 4D
  mask, so the prefix is bidirectional and the FAST tokens causal;
- new layers: a state projection (one state token), a FAST embedding table (with a BOS) and
  a FAST head over the decoder's final hidden states. The VLM's text vocabulary is not reused
  for FAST: its ids mean text, and FAST ids would only collide with them.

Positions: the decoder uses rotary embeddings; prefix tokens take positions
cumsum(valid) - 1 (language padding does not advance them, as in openpi) and the FAST tokens
follow. The cached keys are rotated; the expert's own queries and keys are not, which reads
as all action tokens sitting at position 0 (their order comes from the expert's learned
position embedding).

Grouped-query attention: the decoder has num_attention_heads query heads sharing
num_key_value_heads key/value heads. The cache holds the K/V heads as computed,
(B, num_key_value_heads, P, head_dim), not repeated, and ``num_heads`` is
num_key_value_heads: the expert has one query head per K/V head.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from policies.backbone import (
    BYTE_VOCAB,
    Backbone,
    PrefixCache,
    fast_inputs,
    read_prefix_inputs,
    valid_prefix_tokens,
)
from policies.transformer import init_weights

if TYPE_CHECKING:
    from policies.vla import VLAConfig

logger = logging.getLogger(__name__)

MODEL_TYPES = ("idefics3", "smolvlm")  # VLMs with vision_model, connector and text_model
ATTENTION = ("sdpa", "eager")  # decoder attention that honours a custom 4D mask
DEFAULT_IMAGE_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Idefics3's image_mean, image_std


class HFBackbone(Backbone):
    """A SmolVLM / Idefics3 model behind the ``Backbone`` interface.

    Build it with ``from_pretrained`` (weights, tokenizer and image statistics from a local
    model folder), ``from_config`` (random weights, for tests) or ``from_files`` (what
    ``save_files`` wrote into a checkpoint; the weights then come from the checkpoint).
    """

    def __init__(
        self,
        config: VLAConfig,
        vlm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        image_stats: tuple[tuple[float, ...], tuple[float, ...]] = DEFAULT_IMAGE_STATS,
    ) -> None:
        super().__init__()
        model_type, attention = vlm.config.model_type, vlm.config.text_config._attn_implementation
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"the Hugging Face model is a {model_type!r}; HFBackbone reads {MODEL_TYPES} "
                "models (SmolVLM, Idefics3): use one of those, or backbone=small"
            )
        if attention not in ATTENTION:
            raise ValueError(
                f"the decoder uses {attention!r} attention, which ignores a custom 4D mask: "
                f"load it with attn_implementation in {ATTENTION}"
            )
        self.config, self.vlm, self.tokenizer = config, vlm, tokenizer
        text = vlm.config.text_config
        if tokenizer is None and text.vocab_size < BYTE_VOCAB:
            raise ValueError(
                f"the model has no tokenizer and a vocabulary of {text.vocab_size} < {BYTE_VOCAB}"
                " ids, too few for the byte-level fallback: add tokenizer files to its folder"
            )
        self.num_layers = text.num_hidden_layers
        self.num_heads = text.num_key_value_heads  # the expert: one query head per K/V head
        head_dim = getattr(text, "head_dim", None)
        self.head_dim = head_dim or text.hidden_size // text.num_attention_heads
        C = text.hidden_size
        self.state_proj = nn.Linear(config.state_dim, C)
        self.fast_embed = nn.Embedding(config.fast_vocab_size + 1, C)  # last id = BOS
        self.fast_head = nn.Linear(C, config.fast_vocab_size, bias=False)
        for module in (self.state_proj, self.fast_embed, self.fast_head):
            module.apply(init_weights)
        mean, std = (torch.tensor(s, dtype=torch.float32).view(1, 3, 1, 1) for s in image_stats)
        self.register_buffer("image_mean", mean)  # saved with the weights
        self.register_buffer("image_std", std)

    @classmethod
    def from_pretrained(cls, config: VLAConfig, path: str | Path) -> HFBackbone:
        """Weights, tokenizer and image mean/std from a local model folder (offline)."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"hf_model={path} is not a model folder (no config.json): download it first, "
                "e.g. `hf download HuggingFaceTB/SmolVLM-256M-Instruct --local-dir DIR`, and "
                "pass hf_model=DIR"
            )
        vlm = AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        tokenizer = _load_tokenizer(folder)
        if tokenizer is None:
            logger.warning(
                "%s has no tokenizer files: instructions are fed as UTF-8 bytes, which the "
                "pretrained decoder has never seen; copy the model's tokenizer files there",
                folder,
            )
        return cls(config, vlm, tokenizer, _image_stats(folder))

    @classmethod
    def from_config(
        cls,
        config: VLAConfig,
        hf_config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        attention: str = "sdpa",
    ) -> HFBackbone:
        """Randomly initialised weights for a Hugging Face config (tests, or before loading)."""
        vlm = AutoModel.from_config(hf_config, dtype=torch.float32, attn_implementation=attention)
        return cls(config, vlm, tokenizer)

    @classmethod
    def from_files(cls, config: VLAConfig, folder: str | Path) -> HFBackbone:
        """The architecture and tokenizer ``save_files`` wrote; weights left to load_state_dict."""
        folder = Path(folder)
        return cls.from_config(config, AutoConfig.from_pretrained(folder), _load_tokenizer(folder))

    def save_files(self, folder: str | Path) -> None:
        """Write the model config and the tokenizer (no weights) to ``folder``."""
        self.vlm.config.save_pretrained(folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    def tokenize_instructions(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """The model's tokenizer, or UTF-8 bytes (id = byte + 1, 0 = padding) without one."""
        L = self.config.max_lang_tokens
        if self.tokenizer is None:
            ids = [[b + 1 for b in text.encode("utf-8")] for text in instructions]
        else:
            ids = self.tokenizer(instructions)["input_ids"]
        tokens = torch.zeros(len(instructions), L, dtype=torch.long)
        mask = torch.zeros(len(instructions), L, dtype=torch.bool)
        for i, (text, row) in enumerate(zip(instructions, ids, strict=True)):
            if len(row) > L:
                logger.warning(
                    "instruction %r is %d tokens, truncated to max_lang_tokens=%d",
                    text, len(row), L,
                )  # fmt: skip
            row = row[:L]
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return tokens, mask

    def embed_prefix(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        images, lang_tokens, lang_mask, state = read_prefix_inputs(batch, self.config)
        B, side = len(state), self.vlm.config.vision_config.image_size
        pixels = torch.cat(images)  # (num_cams * B, 3, h, w), camera-major
        if pixels.shape[-2:] != (side, side):
            # The image processor resizes with PIL (Lanczos); bilinear with antialias is close.
            pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)
        pixels = (pixels - self.image_mean) / self.image_std
        vision = self.vlm.vision_model(pixel_values=pixels.to(self.vlm.dtype)).last_hidden_state
        image_tokens = self.vlm.connector(vision)  # (num_cams * B, T, C)
        image_tokens = torch.cat(image_tokens.split(B), dim=1)  # (B, num_cams * T, C)
        lang = self.vlm.get_input_embeddings()(lang_tokens)  # (B, L, C)
        state_token = self.state_proj(state)[:, None].to(lang.dtype)  # (B, 1, C)
        prefix = torch.cat([image_tokens.to(lang.dtype), lang, state_token], dim=1)  # (B, P, C)
        return prefix, valid_prefix_tokens(prefix, lang_mask)

    def forward(
        self, prefix: Tensor, prefix_valid: Tensor, fast_tokens: Tensor | None, mask: Tensor
    ) -> tuple[PrefixCache, Tensor | None]:
        P = prefix.shape[1]
        x = prefix
        positions = prefix_valid.long().cumsum(dim=1) - 1  # (B, P)
        if fast_tokens is not None:
            fast = self.fast_embed(fast_inputs(fast_tokens, self.config)).to(prefix.dtype)
            x = torch.cat([prefix, fast], dim=1)  # (B, P + F, C)
            after = torch.arange(1, fast.shape[1] + 1, device=positions.device)
            positions = torch.cat([positions, positions[:, -1:] + after], dim=1)  # (B, P + F)
        kv = DynamicCache()
        out = self.vlm.text_model(
            inputs_embeds=x,
            attention_mask=self._decoder_mask(mask, x.dtype),
            position_ids=positions,
            past_key_values=kv,
            use_cache=True,
        )
        keys = [layer.keys[:, :, :P] for layer in kv.layers]  # (B, num_kv_heads, P, hd) each
        values = [layer.values[:, :, :P] for layer in kv.layers]
        cache = PrefixCache(keys, values, prefix_valid)
        if fast_tokens is None:
            return cache, None
        return cache, self.fast_head(out.last_hidden_state[:, P:])  # (B, F, V)

    def _decoder_mask(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """mask (B, N, N) bool -> the 4D mask (B, 1, N, N) transformers passes through as is:
        boolean for sdpa, additive (0 or the dtype's minimum) for eager, as its own masks."""
        if self.vlm.config.text_config._attn_implementation == "sdpa":
            return mask[:, None]
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )[:, None]


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase | None:
    """The folder's tokenizer, or None when it has no tokenizer files."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(folder)


def _image_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean and image_std of the folder's image processor (Idefics3's when absent)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return DEFAULT_IMAGE_STATS
    processor = json.loads(path.read_text())
    mean, std = DEFAULT_IMAGE_STATS
    return tuple(processor.get("image_mean", mean)), tuple(processor.get("image_std", std))
