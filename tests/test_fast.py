"""FAST tokenizer: round trip, compression, frequency-major order, soft decoding, save/load."""

import logging

import numpy as np
import pytest

from policies.fast import CHAR_BASE, FastTokenizer

H, D, SCALE = 50, 4, 10.0


def smooth_chunks(n: int, seed: int) -> np.ndarray:
    """(n, H, D) sums of two slow sinusoids per dimension, in about [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, H)[None, :, None, None]  # (1, H, 1, 1)
    freq = rng.uniform(0.1, 1.5, (n, 1, D, 2))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, D, 2))
    amp = rng.uniform(0.1, 0.5, (n, 1, D, 2))
    return (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


@pytest.fixture(scope="module")
def tokenizer() -> FastTokenizer:
    return FastTokenizer(scale=SCALE, vocab_size=512).fit(smooth_chunks(500, seed=0))


def test_round_trip_error_is_bounded(tokenizer):
    # Rounding moves each DCT coefficient by at most 0.5 / scale = 0.05; the orthonormal inverse
    # DCT keeps the L2 norm, so per dimension RMS error <= 0.05 and max error <= 0.05 sqrt(H).
    bound = 0.5 / SCALE
    for chunk in smooth_chunks(50, seed=1):
        err = tokenizer.decode(tokenizer.encode(chunk)) - chunk  # (H, D)
        assert np.sqrt((err**2).mean(axis=0)).max() <= bound + 1e-9
        assert np.abs(err).max() <= bound * np.sqrt(H) + 1e-9


def test_compresses_smooth_chunks(tokenizer):
    lengths = [len(tokenizer.encode(c)) for c in smooth_chunks(50, seed=2)]
    assert max(lengths) < H * D
    assert np.mean(lengths) < H * D / 4
    assert all(
        0 <= i < tokenizer.vocab_size for c in smooth_chunks(5, 3) for i in tokenizer.encode(c)
    )


def test_coefficients_are_frequency_major(tokenizer, caplog):
    # The first D characters are frequency 0 of each dimension: a constant chunk per dimension.
    q = np.array([3, -2, 1, 0])
    ids = [tokenizer._bpe.token_to_id(chr(CHAR_BASE + int(v) - tokenizer.min_coef)) for v in q]
    with caplog.at_level(logging.WARNING):
        chunk = tokenizer.decode(ids)  # the other coefficients are zero-filled, with a warning
    assert "zero-filled" in caplog.text
    assert np.allclose(chunk, np.broadcast_to(q / SCALE / np.sqrt(H), (H, D)))


@pytest.mark.parametrize(
    "ids", [[], [-1, 10**12, 7], [0] * 1000, list(range(5000)), ["x", None, 2.5]]
)
def test_decoding_garbage_fails_soft(tokenizer, ids, caplog):
    with caplog.at_level(logging.WARNING):
        chunk = tokenizer.decode(ids)
    assert chunk.shape == (H, D) and np.isfinite(chunk).all()
    assert "invalid" in caplog.text


def test_save_load_identity(tokenizer, tmp_path):
    path = tmp_path / "fast.json"
    tokenizer.save(path)
    loaded = FastTokenizer.load(path)
    assert (loaded.horizon, loaded.action_dim, loaded.scale) == (H, D, SCALE)
    assert loaded.vocab_size == tokenizer.vocab_size
    for chunk in smooth_chunks(10, seed=4):
        ids = tokenizer.encode(chunk)
        assert loaded.encode(chunk) == ids
        assert np.array_equal(loaded.decode(ids), tokenizer.decode(ids))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="refit"):
        FastTokenizer.load(tmp_path / "bad.json")


def test_encode_padded(tokenizer, caplog):
    chunks = smooth_chunks(3, seed=5)
    lengths = [len(tokenizer.encode(c)) for c in chunks]
    tokens, mask = tokenizer.encode_padded(chunks, max_len=max(lengths) + 2)
    assert tokens.dtype == np.int64 and mask.dtype == bool
    assert mask.sum(axis=1).tolist() == lengths
    assert np.all(tokens[~mask] == 0)
    with caplog.at_level(logging.WARNING):
        tokens, mask = tokenizer.encode_padded(chunks, max_len=2)
    assert mask.all() and tokens.shape == (3, 2) and "truncated" in caplog.text


def test_errors_say_what_to_do(tokenizer):
    with pytest.raises(RuntimeError, match="fit"):
        FastTokenizer().encode(np.zeros((H, D)))
    with pytest.raises(ValueError, match="refit"):
        tokenizer.encode(np.zeros((H + 1, D)))
    with pytest.raises(ValueError, match="normalize"):
        FastTokenizer(vocab_size=64).fit(100.0 * smooth_chunks(20, seed=6))


def test_out_of_range_coefficients_are_clipped(caplog):
    tokenizer = FastTokenizer(scale=SCALE, vocab_size=512).fit(smooth_chunks(50, seed=7))
    with caplog.at_level(logging.WARNING):
        chunk = tokenizer.decode(tokenizer.encode(np.full((H, D), 50.0)))
    assert "clipped" in caplog.text
    # Frequency 0 of each dimension is clipped to the largest fitted coefficient.
    assert np.allclose(chunk, tokenizer.max_coef / SCALE / np.sqrt(H))
