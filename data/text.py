"""Text inputs: a stable word tokenizer and hashed token ids (no vocabulary to share)."""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words."""
    return _WORD.findall(text.lower())


def hashed_ids(text: str, vocab: int, max_len: int) -> np.ndarray:
    """Token ids in 1..vocab-1 by BLAKE2b hash of each word (0 pads), length ``max_len``.

    Stable across processes and machines, unlike Python's ``hash``.
    """
    ids = np.zeros(max_len, dtype=np.int64)
    for i, w in enumerate(words(text)[:max_len]):
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        ids[i] = 1 + h % (vocab - 1)
    return ids
