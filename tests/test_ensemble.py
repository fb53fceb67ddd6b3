"""The contrastive ensemble against a literal transcription of the reference formula."""

from __future__ import annotations

import torch
from torch.nn.functional import normalize

from mmfl.strategies.ensemble import (
    OtherModality,
    contrastive_scores,
    contrastive_weights,
    uniform_weights,
    weight_entropy,
    weighted_sum,
)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def literal_con_w(local_reps: list[torch.Tensor], global_other: torch.Tensor) -> torch.Tensor:
    """MMFL.distill.aggregation (con_w), transcribed: full N x N logits, diag of log-softmax,
    softmax over clients, weighted sum."""
    scores = []
    for vec in local_reps:
        logits = vec @ global_other.T
        log_prob = logits - torch.log(torch.sum(torch.exp(logits), 1, keepdim=True))
        scores.append(torch.diag(log_prob))
    weights = torch.softmax(torch.stack(scores), dim=0)
    return (weights.unsqueeze(-1) * torch.stack(local_reps)).sum(0)


def test_chunked_equals_literal_formula() -> None:
    n, d = 700, 32
    g = unit(n, d, seed=0)
    locals_ = [unit(n, d, seed=i + 1) for i in range(4)]
    locals_.append(normalize(g + 0.3 * unit(n, d, seed=9), dim=-1))  # a site close to the server
    expected = literal_con_w(locals_, g)
    for chunk in (1, 64, 700, 4096):
        w = contrastive_weights(locals_, [OtherModality(g, torch.arange(n))], 1.0, chunk)
        got = weighted_sum(locals_, w)
        assert (got - expected).abs().max().item() < 1e-5


def test_weights_are_a_distribution_and_prefer_the_aligned_site() -> None:
    n, d = 400, 16
    g = unit(n, d, seed=1)
    aligned = normalize(g + 0.1 * unit(n, d, seed=2), dim=-1)
    noise = unit(n, d, seed=3)
    w = contrastive_weights([aligned, noise], [OtherModality(g, torch.arange(n))])
    assert torch.allclose(w.sum(0), torch.ones(n)) and (w >= 0).all()
    assert (w[0] > w[1]).float().mean() > 0.95
    # A temperature sharpens the same preference.
    sharp = contrastive_weights([aligned, noise], [OtherModality(g, torch.arange(n))], temperature=0.05)
    assert weight_entropy(sharp) < weight_entropy(w) < 0.6932


def test_one_site_is_returned_as_is_and_mean_is_uniform() -> None:
    v = unit(50, 8, seed=4)
    w = contrastive_weights([v], [OtherModality(unit(50, 8, seed=5), torch.arange(50))])
    assert torch.allclose(weighted_sum([v], w), v)
    a, b = unit(50, 8, seed=6), unit(50, 8, seed=7)
    assert torch.allclose(weighted_sum([a, b], uniform_weights(2, 50)), (a + b) / 2)
    assert abs(weight_entropy(uniform_weights(4, 10)) - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_rows_missing_the_other_modality_get_uniform_weights() -> None:
    n, d = 60, 8
    g_other = unit(40, d, seed=8)  # only the first 40 rows hold the other modality
    position = torch.cat([torch.arange(40), torch.full((20,), -1)])
    v1, v2 = unit(n, d, seed=9), unit(n, d, seed=10)
    s = contrastive_scores(v1, OtherModality(g_other, position))
    assert torch.isnan(s[40:]).all() and torch.isfinite(s[:40]).all()
    w = contrastive_weights([v1, v2], [OtherModality(g_other, position)])
    assert torch.allclose(w[:, 40:], torch.full((2, 20), 0.5))
