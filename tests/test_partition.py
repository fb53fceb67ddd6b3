"""Partitioners: every sample assigned once; Dirichlet skew is measurably non-IID at small alpha."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfl.data.partition import drop_modalities, label_skew, partition_dirichlet, partition_iid

LABELS = np.repeat(np.arange(10), 250)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@settings(max_examples=40, deadline=None, database=None)
@given(
    n=st.integers(10, 400),
    shares=st.lists(st.floats(0.1, 5.0), min_size=1, max_size=8),
    seed=st.integers(0, 2**31 - 1),
)
def test_iid_assigns_every_sample_once_in_proportion(n: int, shares: list[float], seed: int) -> None:
    parts = partition_iid(n, shares, np.random.default_rng(seed))
    assert_exact_cover(parts, n)
    expected = np.asarray(shares) / sum(shares) * n
    assert np.all(np.abs(np.array([len(p) for p in parts]) - expected) < 1.0 + 1e-9)


@settings(max_examples=25, deadline=None, database=None)
@given(alpha=st.sampled_from([0.05, 0.3, 1.0, 10.0]), k=st.integers(2, 8), seed=st.integers(0, 10**6))
def test_dirichlet_assigns_every_sample_once(alpha: float, k: int, seed: int) -> None:
    parts = partition_dirichlet(LABELS, [1.0] * k, alpha, np.random.default_rng(seed), min_samples=5)
    assert_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 5


def test_small_alpha_is_measurably_non_iid() -> None:
    rng = np.random.default_rng(0)
    iid = np.mean([label_skew(partition_iid(len(LABELS), [1] * 6, rng), LABELS) for _ in range(5)])
    skew = {
        a: np.mean([label_skew(partition_dirichlet(LABELS, [1] * 6, a, rng, 5), LABELS) for _ in range(5)])
        for a in (0.1, 1.0, 100.0)
    }
    assert iid < 0.08
    assert skew[0.1] > 0.5  # most of each site's mass sits on a few classes
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.1


def test_dirichlet_refuses_impossible_minimum() -> None:
    with pytest.raises(ValueError, match="cannot give 3 sites 1000 each"):
        partition_dirichlet(LABELS, [1, 1, 1], 1.0, np.random.default_rng(0), min_samples=1000)


def test_drop_modalities_rate_and_never_empty() -> None:
    rng = np.random.default_rng(1)
    present = [{"image", "text"}] * 4000 + [{"image"}] * 100
    seen = drop_modalities(present, ["image", "text"], 0.3, rng)
    paired = seen[:4000]
    dropped = sum(1 for s in paired if len(s) == 1)
    assert abs(dropped / 4000 - 0.3) < 0.03
    assert all(len(s) >= 1 for s in seen)
    assert all(s == {"image"} for s in seen[4000:])
    text_only_site = drop_modalities(present, ["text"], 0.9, rng)
    assert all(s == {"text"} for s in text_only_site[:4000]) and all(not s for s in text_only_site[4000:])
