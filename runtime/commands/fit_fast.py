"""``rtvla fit-fast``: a FAST tokenizer fitted on a dataset's normalized action chunks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from policies.data import action_chunks, open_dataset
from policies.fast import FastTokenizer
from policies.normalize import Normalizer


def main(cfg: DictConfig) -> dict:
    dataset = open_dataset(cfg.dataset)
    normalizer = Normalizer.from_stats(dataset.meta.stats)
    raw = action_chunks(dataset, cfg.chunk_length, cfg.chunks, cfg.seed)
    chunks = normalizer.normalize("action", torch.from_numpy(raw)).numpy()
    tok = FastTokenizer(scale=cfg.scale, vocab_size=cfg.vocab_size).fit(chunks)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tok.save(tmp)
    os.replace(tmp, out)
    lengths = [len(tok.encode(c)) for c in chunks[:500]]
    errors = [np.abs(tok.decode(tok.encode(c)) - c).max() for c in chunks[:200]]
    return {
        "output": str(out),
        "chunks": len(chunks),
        "vocab_size": tok.vocab_size,
        "tokens_per_chunk_mean": float(np.mean(lengths)),
        "tokens_per_chunk_max": int(np.max(lengths)),
        "values_per_chunk": int(chunks.shape[1] * chunks.shape[2]),
        "max_abs_roundtrip_error": float(np.max(errors)),
    }
