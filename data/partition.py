"""Split a private pool across sites and decide which modalities each site sees per sample.

* IID: a random permutation cut in proportion to the sites' shares.
* Dirichlet label skew: for each class c, site proportions ``p_c ~ Dir(alpha * K * s)`` with
  ``s`` the normalised shares; the class's samples are cut by ``p_c``. Small ``alpha`` gives
  sites few classes each. Draws repeat until every site has ``min_samples`` (as the reference
  code's partitioner does).

Every index is assigned to exactly one site.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

import numpy as np

from mmfl.data.fingerprint import sample_key
from mmfl.data.sample import Sample


def _cuts(n: int, proportions: np.ndarray) -> np.ndarray:
    """Boundaries that cut ``n`` items by ``proportions`` (summing to 1), largest-remainder."""
    raw = proportions * n
    counts = np.floor(raw).astype(int)
    remainder = n - counts.sum()
    if remainder > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:remainder]] += 1
    return np.cumsum(counts)[:-1]


def _normalised(shares: Sequence[float]) -> np.ndarray:
    s = np.asarray(shares, dtype=float)
    if s.ndim != 1 or len(s) == 0 or (s <= 0).any():
        raise ValueError("shares must be a non-empty list of positive numbers")
    return s / s.sum()


def partition_iid(n: int, shares: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Indices 0..n-1 shuffled and cut by shares."""
    perm = rng.permutation(n)
    return [np.sort(part) for part in np.split(perm, _cuts(n, _normalised(shares)))]


def partition_dirichlet(
    labels: Sequence[object],
    shares: Sequence[float],
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split of ``range(len(labels))`` (see module docstring)."""
    s = _normalised(shares)
    k = len(s)
    labels_arr = np.asarray([str(x) for x in labels])
    if len(labels_arr) < k * min_samples:
        raise ValueError(f"{len(labels_arr)} samples cannot give {k} sites {min_samples} each")
    classes = np.unique(labels_arr)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels_arr == c))
            p = rng.dirichlet(alpha * k * s)
            for site, chunk in enumerate(np.split(idx, _cuts(len(idx), p))):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            return [np.sort(np.asarray(p, dtype=int)) for p in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave every site {min_samples} samples "
        f"in {max_tries} draws; raise alpha or lower min_samples"
    )


def drop_modalities(
    present: list[set[str]], site_modalities: Sequence[str], rate: float, rng: np.random.Generator
) -> list[set[str]]:
    """Per sample, what a site sees: its own modalities that the sample holds, and with
    probability ``rate`` (paired sites only) one of them removed at random, never the last."""
    out = []
    for have in present:
        mods = [m for m in site_modalities if m in have]
        if len(mods) > 1 and rate > 0 and rng.random() < rate:
            mods.pop(int(rng.integers(len(mods))))
        out.append(set(mods))
    return out


def label_skew(parts: Sequence[np.ndarray], labels: Sequence[object]) -> float:
    """Mean total-variation distance between each site's label distribution and the pool's
    (0 = identical, 1 = disjoint); a measure of how non-IID a split is."""
    labels_arr = np.asarray([str(x) for x in labels])
    classes = np.unique(labels_arr)
    pool = np.array([(labels_arr == c).mean() for c in classes])
    dists = []
    for part in parts:
        if len(part) == 0:
            continue
        site = np.array([(labels_arr[part] == c).mean() for c in classes])
        dists.append(0.5 * np.abs(site - pool).sum())
    return float(np.mean(dists))


def site_seed(seed: int, site_id: str) -> int:
    """A site's own seed: the run seed combined with a stable hash of its id."""
    return seed * 1_000_003 + zlib.crc32(site_id.encode())


def holdout_split(keys: Sequence[str], salt: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) row indices: row i is held out iff ``sha256(salt, keys[i])``, read as
    a number in [0, 1), is below ``fraction``.

    Each row's side depends on its own key only, never on the other rows: adding or removing
    a row moves no other row between training and holdout (DP-SGD's neighbouring data sets stay
    neighbours after the split), and rows that share a key (a patient's group id) stay together.
    A site and a coordinator that pools the sites' data (the centralized baseline) draw the same
    split from the same keys and salt.
    """
    prefix = f"mmfl-holdout-v2:{salt}:".encode()
    u = np.array(
        [int.from_bytes(hashlib.sha256(prefix + k.encode()).digest()[:8], "big") / 2**64 for k in keys]
    )
    hold = u < fraction
    return np.flatnonzero(~hold), np.flatnonzero(hold)


def site_holdout(
    samples: Sequence[Sample], seed: int, site_id: str, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A site's (training, holdout) rows of its manifest: :func:`holdout_split` on each row's
    key, salted with the site's seed. The site and the ``centralized`` baseline both call this,
    so the baseline pools exactly the rows the site trains on."""
    return holdout_split([sample_key(s) for s in samples], site_seed(seed, site_id), fraction)
