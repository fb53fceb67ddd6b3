"""The ensemble's defences against hostile sites: the numbers, on hand-made tensors."""

from __future__ import annotations

import torch

from mmfl.config import CreamConfig
from mmfl.strategies.defences import cap_weights, trim_far
from mmfl.strategies.methods import method_of
from mmfl.strategies.rule import others


def test_the_cap_bounds_every_weight_and_keeps_the_sum() -> None:
    w = torch.tensor([[0.9, 0.2, 0.5], [0.05, 0.4, 0.25], [0.05, 0.4, 0.25]])
    capped = cap_weights(w, 0.5)
    assert torch.allclose(capped.sum(0), torch.ones(3))
    assert float(capped.max()) <= 0.5 + 1e-6
    # the excess of the first row goes to the others in proportion (0.05 : 0.05 -> equal)
    assert torch.allclose(capped[:, 0], torch.tensor([0.5, 0.25, 0.25]))
    assert torch.equal(capped[:, 1], w[:, 1]) and torch.equal(cap_weights(w, 1.0), w)
    assert torch.allclose(cap_weights(w, 0.1), torch.full((3, 3), 1 / 3))  # below 1/K: uniform


def test_the_trim_drops_the_contributor_far_from_the_median() -> None:
    g = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    honest = [g + 0.01 * k for k in range(4)]
    hostile = -g  # each row the opposite of the consensus
    w = torch.full((5, 4), 0.2)
    w[4] = 0.6  # the hostile site even holds most of the weight
    w = w / w.sum(0)
    trimmed = trim_far([*honest, hostile], w, trim=1)
    assert torch.equal(trimmed[4], torch.zeros(4)) and torch.allclose(trimmed.sum(0), torch.ones(4))
    assert torch.equal(trim_far(honest[:2], w[:2], trim=1), w[:2])  # too few contributors to trim


def test_the_cap_limits_a_site_that_copies_the_global_representations() -> None:
    """A copy of what the coordinator sent retrieves perfectly, so a selective ensemble (cream+'s
    small temperature) hands it much of every row; capped, it holds at most half."""
    torch.manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    honest = [torch.nn.functional.normalize(g + 0.5 * torch.randn(50, 16), dim=1) for _ in range(5)]
    rows = {"image": list(range(50)), "text": list(range(50))}
    share = {}
    for name, cap in (("plain", 1.0), ("capped", 0.5)):
        rule = method_of("cream+").rule(CreamConfig(ensemble_temperature=0.05, max_site_weight=cap))
        w = rule.weights([*honest, g.clone()], others("image", {"text": g}, rows))
        w = cap_weights(w, rule.max_site_weight)
        share[name] = (float(w[5].mean()), float(w[5].max()))
    # five honest sites would hold 1/6 each; the copy takes far more, and the cap stops it at 1/2
    assert share["plain"][0] > 0.4 and share["plain"][1] > 0.9, share
    assert share["capped"][1] <= 0.5 + 1e-6 and share["capped"][0] < share["plain"][0], share
