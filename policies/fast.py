"""FAST action tokenizer: Pertsch et al. 2025, "FAST: Efficient Action Tokenization for
Vision-Language-Action Models", Sec. IV.

A normalized action chunk (H, D) is turned into a short sequence of discrete tokens:

1. DCT-II over time, per action dimension (orthonormal): C = DCT(a) (H frequencies, D dims).
2. Scale and round: q = round(scale * C). Smooth chunks have few nonzero high frequencies.
3. Flatten frequency-major (all dims of frequency 0, then frequency 1, ...), so the zeros of
   the high frequencies form long runs at the end.
4. Map each integer to one character and compress the string with byte-pair encoding
   (BPE, trained with the Hugging Face ``tokenizers`` library).

Decoding inverts the steps. Rounding moves each coefficient by at most 0.5 / scale; the
inverse DCT is orthonormal, so the reconstruction error of one dimension's time series has
RMS <= 0.5 / scale and max <= 0.5 / scale * sqrt(H).
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers

logger = logging.getLogger(__name__)

CHAR_BASE = 0x4E00
"""Coefficient q is stored as chr(CHAR_BASE + q - min_coef): a block of printable code points
with no whitespace or surrogates, so the BPE sees each coefficient as one plain character."""
FORMAT = "rtvla-fast-tokenizer"
VERSION = 1


class FastTokenizer:
    """DCT + BPE tokenizer of (H, D) action chunks; ``fit`` it on normalized chunks first."""

    def __init__(self, scale: float = 10.0, vocab_size: int = 1024) -> None:
        self.scale = scale  # multiplier on DCT coefficients before rounding
        self.requested_vocab_size = vocab_size  # BPE vocabulary size to train (alphabet included)
        self.horizon = 0  # H, set by fit / load
        self.action_dim = 0  # D, set by fit / load
        self.min_coef = 0  # smallest rounded coefficient seen in fit; lower values are clipped
        self.max_coef = 0  # largest rounded coefficient seen in fit; higher values are clipped
        self._bpe: Tokenizer | None = None
        self._warned_clip = False

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id from ``encode`` is in [0, vocab_size)."""
        return self._fitted().get_vocab_size()

    def _coefficients(self, chunks: np.ndarray) -> np.ndarray:
        """(..., H, D) float -> (..., H, D) rounded DCT coefficients (frequency, dim)."""
        return np.rint(dct(chunks, type=2, axis=-2, norm="ortho") * self.scale).astype(np.int64)

    def _fitted(self) -> Tokenizer:
        if self._bpe is None:
            raise RuntimeError("FastTokenizer is not fitted: call fit(chunks) or load(path)")
        return self._bpe

    def fit(self, chunks: np.ndarray) -> "FastTokenizer":
        """Train the BPE on normalized action chunks (N, H, D); returns self."""
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or chunks.shape[0] == 0:
            raise ValueError(f"fit expects chunks of shape (N, H, D), got {chunks.shape}")
        _, self.horizon, self.action_dim = chunks.shape
        coefs = self._coefficients(chunks)  # (N, H, D)
        self.min_coef, self.max_coef = int(coefs.min()), int(coefs.max())
        alphabet_size = self.max_coef - self.min_coef + 1
        if alphabet_size >= self.requested_vocab_size:
            raise ValueError(
                f"rounded DCT coefficients span {alphabet_size} values, not fewer than "
                f"vocab_size={self.requested_vocab_size}: normalize the actions first, or "
                "lower scale, or raise vocab_size"
            )
        alphabet = [chr(CHAR_BASE + i) for i in range(alphabet_size)]
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=alphabet,
        )
        self._bpe = Tokenizer(models.BPE())
        self._bpe.train_from_iterator((self._to_string(c) for c in coefs), trainer=trainer)
        logger.info(
            "fitted FAST tokenizer on %d chunks (H=%d, D=%d): %d tokens, coefficients in [%d, %d]",
            len(chunks), self.horizon, self.action_dim, self.vocab_size, self.min_coef,
            self.max_coef,
        )  # fmt: skip
        return self

    def _to_string(self, coefs: np.ndarray) -> str:
        """(H, D) ints -> one character per coefficient, frequency-major."""
        return "".join(chr(CHAR_BASE + int(q) - self.min_coef) for q in coefs.reshape(-1))

    def encode(self, chunk: np.ndarray) -> list[int]:
        """Normalized chunk (H, D) -> token ids; out-of-range coefficients are clipped."""
        bpe = self._fitted()
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.horizon, self.action_dim):
            raise ValueError(
                f"chunk has shape {chunk.shape}, the tokenizer was fitted on "
                f"({self.horizon}, {self.action_dim}): refit it on chunks of this shape"
            )
        coefs = self._coefficients(chunk)  # (H, D)
        clipped = np.clip(coefs, self.min_coef, self.max_coef)
        if not self._warned_clip and (clipped != coefs).any():
            logger.warning(
                "FAST coefficients outside the fitted range [%d, %d] were clipped; refit the "
                "tokenizer on data that covers these actions (warned once)",
                self.min_coef, self.max_coef,
            )  # fmt: skip
            self._warned_clip = True
        return bpe.encode(self._to_string(clipped)).ids

    def encode_padded(self, chunks: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunks (B, H, D) -> (tokens int64 (B, max_len), mask bool (B, max_len)).

        Padding uses id 0 with mask False; longer sequences are truncated with a warning.
        """
        tokens = np.zeros((len(chunks), max_len), dtype=np.int64)
        mask = np.zeros((len(chunks), max_len), dtype=bool)
        for i, chunk in enumerate(chunks):
            ids = self.encode(chunk)
            if len(ids) > max_len:
                logger.warning(
                    "FAST sequence of %d tokens truncated to max_len=%d: raise the model's "
                    "max_fast_tokens",
                    len(ids), max_len,
                )  # fmt: skip
                ids = ids[:max_len]
            tokens[i, : len(ids)] = ids
            mask[i, : len(ids)] = True
        return tokens, mask

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Token ids -> chunk (H, D). Never raises on bad ids: invalid ids and characters are
        dropped, a sequence of the wrong length is zero-padded or truncated, and a warning
        says so."""
        bpe = self._fitted()
        n_coef = self.horizon * self.action_dim
        alphabet_size = self.max_coef - self.min_coef + 1
        vocab_size = self.vocab_size
        bad_ids, values = 0, []
        for i in ids:
            try:
                token = bpe.id_to_token(int(i)) if 0 <= int(i) < vocab_size else None
            except (TypeError, ValueError, OverflowError):
                token = None
            if token is None:
                bad_ids += 1
                continue
            values.extend(ord(c) - CHAR_BASE for c in token)
        bad_chars = sum(not 0 <= v < alphabet_size for v in values)
        values = [v + self.min_coef for v in values if 0 <= v < alphabet_size]
        if bad_ids or bad_chars or len(values) != n_coef:
            logger.warning(
                "FAST decode of an invalid sequence: dropped %d unknown ids and %d unknown "
                "characters, got %d of %d coefficients; zero-filled or truncated to fit",
                bad_ids, bad_chars, len(values), n_coef,
            )  # fmt: skip
        coefs = np.zeros(n_coef, dtype=np.float64)
        values = values[:n_coef]
        coefs[: len(values)] = values
        coefs = coefs.reshape(self.horizon, self.action_dim) / self.scale  # (H freq, D)
        return idct(coefs, type=2, axis=0, norm="ortho")

    def save(self, path: str | Path) -> None:
        """Write one JSON file: the BPE (``tokenizers`` JSON) plus H, D, scale and range."""
        state = {
            "format": FORMAT,
            "version": VERSION,
            "scale": self.scale,
            "vocab_size": self.requested_vocab_size,
            "horizon": self.horizon,
            "action_dim": self.action_dim,
            "min_coef": self.min_coef,
            "max_coef": self.max_coef,
            "bpe": json.loads(self._fitted().to_str()),
        }
        Path(path).write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | Path) -> "FastTokenizer":
        """Read a file written by ``save``."""
        state = json.loads(Path(path).read_text())
        if state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ValueError(
                f"{path} is not a FAST tokenizer file of version {VERSION}: "
                f"format={state.get('format')!r}, version={state.get('version')!r}; refit and save"
            )
        tok = cls(scale=state["scale"], vocab_size=state["vocab_size"])
        tok.horizon, tok.action_dim = state["horizon"], state["action_dim"]
        tok.min_coef, tok.max_coef = state["min_coef"], state["max_coef"]
        tok._bpe = Tokenizer.from_str(json.dumps(state["bpe"]))
        return tok
