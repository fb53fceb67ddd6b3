"""Turn manifest items into fixed-shape arrays, caching the expensive ones on disk.

A :class:`Featurizer` maps the items of one modality to arrays of one shape: resized pixels,
hashed token ids, MFCC frames, or the features of a frozen pretrained backbone. Expensive
featurizers (image decoding, backbones) keep their outputs in a SQLite file per featurizer,
keyed by the item's content fingerprint, so no file or text is encoded twice, whichever
manifest it appears in.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmfl.data.audio import MFCC_COEFFS, fixed_length, load_mfcc, pooled_stats
from mmfl.data.fingerprint import item_fingerprint
from mmfl.data.images import load_image
from mmfl.data.sample import Sample
from mmfl.data.text import hashed_ids

HASH_VOCAB = 1 << 13
TEXT_MAX_LEN = 32
MFCC_FRAMES = 48


@dataclass(frozen=True)
class Featurizer:
    """Items of one modality -> arrays of ``shape``; ``key`` names the cache (and version)."""

    key: str
    modality: str
    shape: tuple[int, ...]
    dtype: str
    encode: Callable[[list[str]], np.ndarray]  # raw values (paths or texts) -> (B, *shape)
    cached: bool
    batch_size: int = 64


class FeatureCache:
    """SQLite store of arrays keyed by item fingerprint, one file per featurizer."""

    def __init__(self, root: Path, featurizer: Featurizer) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.featurizer = featurizer
        self.path = root / f"{featurizer.key}.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, data BLOB)")

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        shape, dtype = self.featurizer.shape, np.dtype(self.featurizer.dtype)
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(
                f"SELECT key, data FROM features WHERE key IN ({marks})", chunk
            ):
                found[key] = np.frombuffer(blob, dtype=dtype).reshape(shape)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        dtype = np.dtype(self.featurizer.dtype)
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO features (key, data) VALUES (?, ?)",
                [(k, np.ascontiguousarray(v, dtype=dtype).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self._db.close()


def featurize(
    samples: Sequence[Sample],
    featurizer: Featurizer,
    cache_root: Path | None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays for every sample's item of ``featurizer.modality`` and a presence mask.

    Returns ``(values, present)``: ``values`` is ``(N, *shape)``, zero where the sample lacks
    the modality; ``present`` is a boolean ``(N,)``.
    """
    m = featurizer.modality
    present = np.array([s.has(m) for s in samples], dtype=bool)
    out = np.zeros((len(samples), *featurizer.shape), dtype=featurizer.dtype)
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        return out, present
    cache = FeatureCache(cache_root, featurizer) if featurizer.cached and cache_root else None
    try:
        todo = rows
        if cache is not None:
            keys = [item_fingerprint(samples[i], m) for i in rows]
            found = cache.get_many(keys)
            for i, key in zip(rows, keys, strict=True):
                if key in found:
                    out[i] = found[key]
            todo = np.array([i for i, k in zip(rows, keys, strict=True) if k not in found], dtype=int)
        desc = f"encoding {m} ({featurizer.key})"
        bar = tqdm(total=len(todo), desc=desc, disable=not progress or len(todo) < 256 or None, leave=False)
        # tqdm draws nothing without a terminal; a long step still says what it is doing.
        plain = (
            progress and featurizer.cached and bar.disable and len(todo) >= 256 and not sys.stderr.isatty()
        )
        if plain:
            print(f"{desc}: {len(todo)} items", file=sys.stderr, flush=True)
        for start in range(0, len(todo), featurizer.batch_size):
            batch = todo[start : start + featurizer.batch_size]
            values = featurizer.encode([samples[i].values[m] for i in batch])
            out[batch] = values
            if cache is not None:
                cache.put_many(
                    {item_fingerprint(samples[i], m): v for i, v in zip(batch, values, strict=True)}
                )
            bar.update(len(batch))
        bar.close()
        if plain:
            print(f"{desc}: done", file=sys.stderr, flush=True)
    finally:
        if cache is not None:
            cache.close()
    return out, present


def _pixels(size: int, channels: int) -> Featurizer:
    def encode(paths: list[str]) -> np.ndarray:
        return np.stack([load_image(p, size, channels) for p in paths])

    return Featurizer(f"pixels-{size}x{channels}", "image", (channels, size, size), "float32", encode, True)


def _effnet() -> Featurizer:
    from mmfl.data.backbones import efficientnet_features

    def encode(paths: list[str]) -> np.ndarray:
        return efficientnet_features(np.stack([load_image(p, 224, 3) for p in paths]))

    return Featurizer("effnet-lite0-224", "image", (1280,), "float32", encode, True, batch_size=16)


def _tokens() -> Featurizer:
    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([hashed_ids(t, HASH_VOCAB, TEXT_MAX_LEN) for t in texts])

    return Featurizer(
        f"hash-{HASH_VOCAB}-{TEXT_MAX_LEN}", "text", (TEXT_MAX_LEN,), "int64", encode, False, 1024
    )


def _glove() -> Featurizer:
    from mmfl.data.backbones import glove_mean

    return Featurizer("glove6b50-mean", "text", (50,), "float32", glove_mean, True, 1024)


def _minilm() -> Featurizer:
    from mmfl.data.backbones import minilm_features

    return Featurizer("minilm-l6-v2-unbatched", "text", (384,), "float32", minilm_features, True, 64)


def _mfcc_seq() -> Featurizer:
    def encode(paths: list[str]) -> np.ndarray:
        return np.stack([fixed_length(load_mfcc(p), MFCC_FRAMES) for p in paths])

    return Featurizer(
        f"mfcc-seq{MFCC_FRAMES}", "audio", (MFCC_COEFFS, MFCC_FRAMES), "float32", encode, True, 512
    )


def _mfcc_stats() -> Featurizer:
    def encode(paths: list[str]) -> np.ndarray:
        return np.stack([pooled_stats(load_mfcc(p)) for p in paths])

    return Featurizer("mfcc-stats", "audio", (4 * MFCC_COEFFS,), "float32", encode, True, 512)


def get_featurizer(name: str, image_size: int = 32, image_channels: int = 3) -> Featurizer:
    """The featurizer called ``name``; pixel featurizers take the data set's image geometry."""
    builders: dict[str, Callable[[], Featurizer]] = {
        "pixels": lambda: _pixels(image_size, image_channels),
        "effnet-lite0": _effnet,
        "tokens": _tokens,
        "glove-mean": _glove,
        "minilm": _minilm,
        "mfcc-seq": _mfcc_seq,
        "mfcc-stats": _mfcc_stats,
    }
    if name not in builders:
        raise ValueError(f"unknown featurizer {name!r} (known: {', '.join(builders)})")
    return builders[name]()
