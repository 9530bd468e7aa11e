"""Instructions as hashed word ids: the tokenizer of the small policies (no vocabulary to fit
or save, any instruction has a tokenization; two words share an id with probability about
1 / HASH_BUCKETS)."""

from __future__ import annotations

import re
import zlib

HASH_BUCKETS = 4096  # word-hash vocabulary: ids 1 .. HASH_BUCKETS - 1, 0 pads


def words(text: str, max_words: int, buckets: int = HASH_BUCKETS) -> list[int]:
    """``text``'s first ``max_words`` lower-cased alphanumeric words as ids in [1, buckets)."""
    tokens = re.findall(r"[a-z0-9]+", text.lower())[:max_words]
    return [1 + zlib.crc32(t.encode()) % (buckets - 1) for t in tokens]
