"""Retrieval metrics: mean average precision over the same-class items (class-paired data)."""

from __future__ import annotations

import pytest
import torch

from mmfl.models.metrics import mean_average_precision, retrieval_metrics


def test_average_precision_counts_each_relevant_item_at_its_rank() -> None:
    q = torch.tensor([[0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.9]])  # ranked c2, c1, c0
    # relevant (label 1): c0 and c2 -> hits at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert mean_average_precision(q, c, torch.tensor([1]), torch.tensor([1, 0, 1])) == pytest.approx(
        100 * (1 + 2 / 3) / 2
    )
    # a query with no same-class candidate is skipped, not counted as zero
    assert mean_average_precision(
        torch.cat([q, q]), c, torch.tensor([1, 7]), torch.tensor([1, 0, 1])
    ) == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_map_separates_models_that_recall_at_k_cannot() -> None:
    # ten classes, one candidate per class is enough for R@1 = 100 on class-paired data;
    # a model that also ranks the other same-class items low has the same R@K but a lower mAP.
    labels = torch.arange(10).repeat(3)
    good = torch.nn.functional.one_hot(labels, 10).float()
    bad = good.clone()
    # 2 of each class's 3 texts sit (at half length) where the next class is
    bad[10:] = 0.5 * torch.nn.functional.one_hot((labels[10:] + 1) % 10, 10).float()
    mg = retrieval_metrics(good, good, labels, True, ("image", "text"))
    mb = retrieval_metrics(good, bad, labels, True, ("image", "text"))
    assert mg["image2text_r1"] == mb["image2text_r1"] == 100.0
    assert mg["map"] == pytest.approx(100.0) and mb["image2text_map"] < 70.0
    assert "map" not in retrieval_metrics(good, good, labels, False, ("image", "text"))
