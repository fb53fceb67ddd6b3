"""Baseline: the uniform mean of the sites' representations."""

from __future__ import annotations

import torch

from mmfl.strategies.ensemble import OtherModality, uniform_weights, weight_entropy, weighted_sum
from mmfl.strategies.representation import RepresentationStrategy


class MeanEnsemble(RepresentationStrategy):
    r"""Every contributor counts the same: :math:`\hat v_j = \frac{1}{K}\sum_k v_j^k`."""

    def combine(
        self, modality: str, contributions: list[torch.Tensor], others: list[OtherModality]
    ) -> torch.Tensor:
        weights = uniform_weights(len(contributions), len(contributions[0]))
        self.last_round.weight_entropy[modality] = weight_entropy(weights)
        return weighted_sum(contributions, weights)
