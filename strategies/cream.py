"""CreamFL's global-local cross-modal contrastive ensemble (``con_w``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmfl.strategies.ensemble import OtherModality, contrastive_weights
from mmfl.strategies.rule import EnsembleRule


class CreamEnsemble(EnsembleRule):
    r"""Weight each site's representation of each public row by how well it retrieves the
    global representation of the other modality, softmax over sites, weighted sum:

    .. math::

        s_j^k = \frac{\langle v_j^k, g^o_j\rangle}{T} - \log\sum_l e^{\langle v_j^k, g^o_l\rangle / T},
        \quad \alpha_j^k = \mathrm{softmax}_k(s_j^k), \quad \hat v_j = \sum_k \alpha_j^k v_j^k

    ``temperature = 1`` reproduces the reference code. Unit vectors scored at ``T = 1`` differ
    by at most 2 in logit, so the weights come out nearly uniform; a smaller ``T`` (the
    ``cream+`` method) makes the ensemble selective. See :mod:`mmfl.strategies.ensemble`.
    """

    def __init__(self, temperature: float = 1.0, chunk: int = 1024) -> None:
        self.temperature = temperature
        self.chunk = chunk

    def weights(self, contributions: Sequence[torch.Tensor], others: Sequence[OtherModality]) -> torch.Tensor:
        return contrastive_weights(contributions, others, self.temperature, self.chunk)
