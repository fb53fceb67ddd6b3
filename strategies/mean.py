"""Baseline: the uniform mean of the sites' representations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmfl.strategies.ensemble import OtherModality, uniform_weights
from mmfl.strategies.rule import EnsembleRule


class MeanEnsemble(EnsembleRule):
    r"""Every contributor counts the same: :math:`\hat v_j = \frac{1}{K}\sum_k v_j^k`."""

    def weights(self, contributions: Sequence[torch.Tensor], others: Sequence[OtherModality]) -> torch.Tensor:
        return uniform_weights(len(contributions), len(contributions[0]))
