"""CreamFL's losses: reference values from the notes' unit-level checks."""

from __future__ import annotations

import math

import torch
from torch.nn.functional import cross_entropy, normalize

from mmfl.models.losses import (
    distill_contrastive,
    inter_modal,
    intra_modal,
    paired_contrastive,
    positives_matrix,
)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_intra_modal_reference_value() -> None:
    z = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 1.0]])  # orthogonal to z
    assert abs(intra_modal(z, z.clone(), old, 0.5).item() - math.log(1 + math.exp(-2))) < 1e-6


def test_inter_modal_is_cross_entropy_over_all_public_rows() -> None:
    z, g = unit(8, 16, seed=0), unit(100, 16, seed=1)
    rows = torch.tensor([3, 50, 7, 99, 0, 1, 2, 64])
    expected = torch.stack([-torch.log_softmax(z[i] @ g.T / 0.5, 0)[rows[i]] for i in range(8)]).mean()
    assert abs(inter_modal(z, g, rows, 0.5).item() - expected.item()) < 1e-6
    # With the public set equal to the batch it is InfoNCE at temperature 0.5.
    g8 = unit(8, 16, seed=2)
    assert (
        abs(
            inter_modal(z, g8, torch.arange(8), 0.5).item()
            - cross_entropy(z @ g8.T / 0.5, torch.arange(8)).item()
        )
        < 1e-6
    )


def test_paired_contrastive_is_clip_for_instance_pairs_and_soft_for_classes() -> None:
    a, b = unit(6, 8, seed=3), unit(6, 8, seed=4)
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    eye = positives_matrix(labels, labels, by_class=False)
    clip = 0.5 * (
        cross_entropy(a @ b.T / 0.1, torch.arange(6)) + cross_entropy(b @ a.T / 0.1, torch.arange(6))
    )
    assert abs(paired_contrastive(a, b, eye, 0.1).item() - clip.item()) < 1e-6
    cls = positives_matrix(labels, labels, by_class=True)
    assert cls[0, 1] and cls[1, 0] and not cls[0, 2] and not cls[5, 4] and cls[5, 5]
    # With class positives, swapping two same-class partners does not change the loss.
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    assert (
        abs(paired_contrastive(a, b, cls, 0.1).item() - paired_contrastive(a, b[perm], cls, 0.1).item())
        < 1e-6
    )


def test_contrastive_distillation_rewards_the_target_structure() -> None:
    t = unit(32, 16, seed=5)
    assert distill_contrastive(t, t * 0.3, 0.1) < distill_contrastive(unit(32, 16, seed=6), t, 0.1)
