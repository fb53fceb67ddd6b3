"""Featurizers: right shapes, real backbones, and a cache that never encodes an item twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mmfl.data.features import featurize, get_featurizer
from mmfl.data.text import hashed_ids


def counting(featurizer):
    calls = {"items": 0}
    inner = featurizer.encode

    def encode(values):
        calls["items"] += len(values)
        return inner(values)

    return dataclasses.replace(featurizer, encode=encode), calls


def test_pixels_are_cached_by_content(digits, tmp_path: Path) -> None:
    samples = digits.manifest("public").samples[:100]
    feat, calls = counting(get_featurizer("pixels", image_size=28, image_channels=1))
    values, present = featurize(samples, feat, tmp_path)
    assert values.shape == (100, 1, 28, 28) and present.all() and calls["items"] == 100
    assert (
        0.0 <= values.min() and values.max() <= 1.0 and 0.05 < values.mean() < 0.3
    )  # MNIST: bright strokes on black
    again, _ = featurize(samples, feat, tmp_path)
    assert calls["items"] == 100  # second pass read everything from the cache
    assert np.array_equal(again, values)
    # The same files listed by another manifest hit the same cache entries.
    shuffled = list(reversed(samples))
    rev, _ = featurize(shuffled, feat, tmp_path)
    assert calls["items"] == 100 and np.array_equal(rev, values[::-1])


def test_missing_items_are_masked(digits, tmp_path: Path) -> None:
    samples = digits.manifest("public").samples[:60]
    values, present = featurize(samples, get_featurizer("mfcc-stats"), tmp_path)
    assert present.tolist() == [s.has("audio") for s in samples]
    assert np.all(values[~present] == 0) and np.all(np.abs(values[present]).sum(1) > 0)
    seq, _ = featurize(samples, get_featurizer("mfcc-seq"), tmp_path)
    assert seq.shape == (60, 13, 48)


def test_text_featurizers(digits, tmp_path: Path) -> None:
    assert np.array_equal(hashed_ids("Seven seven!", 1 << 15, 4), hashed_ids("seven SEVEN", 1 << 15, 4))
    ids = hashed_ids("a red bird", 1 << 15, 5)
    assert (ids[:3] > 0).all() and (ids[3:] == 0).all()
    samples = digits.manifest("public").samples[:20]
    glove, _ = featurize(samples, get_featurizer("glove-mean"), tmp_path)
    by_word = {s.values["text"]: glove[i] for i, s in enumerate(samples)}
    assert all(np.linalg.norm(v) > 0.5 for v in by_word.values())
    if "one" in by_word and "two" in by_word:
        assert not np.allclose(by_word["one"], by_word["two"])


def test_pretrained_backbones_give_meaningful_features(tmp_path: Path) -> None:
    from mmfl.data.backbones import efficientnet_features, minilm_features

    emb = minilm_features(
        ["a photo of a dog playing in the grass", "a puppy running on a lawn", "a bowl of soup"]
    )
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > 0.5 > float(emb[0] @ emb[2])
    white = np.ones((2, 3, 224, 224), np.float32)
    feats = efficientnet_features(white)
    assert (
        feats.shape == (2, 1280) and np.isfinite(feats).all() and np.allclose(feats[0], feats[1], atol=1e-5)
    )
