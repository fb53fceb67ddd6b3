"""Empirical privacy audit: membership inference against a site's model.

Two attacks score each candidate sample; higher means "more likely a training member":

* loss threshold (white box): ``-CE(head(z), y)``; members have lower loss when the model
  memorised them;
* representation (what shared representations plus class prototypes reveal): cosine of the
  candidate's representation with its class's head weight.

The attack's AUC over members vs held-out non-members is 0.5 for a model that leaks nothing
about membership; DP-SGD bounds how far above 0.5 it can go.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mmfl.data.tensors import Tensors
from mmfl.models.multimodal import MultiEncoder


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks of ties
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = sums[inverse] / counts[inverse]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def attack_scores(model: MultiEncoder, data: Tensors, modality: str) -> dict[str, np.ndarray]:
    """Per-sample membership scores of both attacks for rows holding ``modality`` and a label."""
    model.eval()
    rows = torch.nonzero(data.present[modality] & (data.labels >= 0)).flatten()
    z = model.encode(modality, data.inputs[modality][rows])
    y = data.labels[rows]
    head = model.heads[modality]
    loss = F.cross_entropy(head(z), y, reduction="none")
    prototypes = F.normalize(head.linear.weight, dim=1)
    cosine = (z * prototypes[y]).sum(1)
    return {"loss": (-loss).numpy(), "representation": cosine.numpy()}


def membership_auc(
    model: MultiEncoder, members: Tensors, nonmembers: Tensors, modality: str
) -> dict[str, float]:
    inside, outside = attack_scores(model, members, modality), attack_scores(model, nonmembers, modality)
    return {name: auc(inside[name], outside[name]) for name in inside}
