r"""The sites' released models as one model: similarity fusion.

For members :math:`k = 1..K` (sites holding every modality of the run), each with its own
featurizers and encoders :math:`f^m_k`, the ensemble scores a pair by the sum of the members'
cosine similarities, which is a dot product of concatenations:

.. math::

    S(x, y) = \frac1K \sum_k \cos\big(f^a_k(x), f^b_k(y)\big)
            = e^a(x) \cdot e^b(y), \qquad
    e^m(x) = \tfrac{1}{\sqrt K}\,\big[\hat f^m_1(x), \dots, \hat f^m_K(x)\big]

so :math:`e^m` (unit norm, dimension :math:`K d`) is the ensemble's embedding: a model like any
other for retrieval, embedding and export. Members are chosen on val (:func:`choose_members`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from mmfl.models.metrics import pairwise_retrieval
from mmfl.models.multimodal import MultiEncoder

MemberInputs = Mapping[str, torch.Tensor]
"""One member's featurized inputs per modality (the member's own featurizers)."""


class SiteEnsemble:
    """Members' models (eval mode) fused by similarity; ``sites[k]`` names member k."""

    def __init__(self, sites: Sequence[str], members: Sequence[MultiEncoder], batch_size: int = 512) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.sites = list(sites)
        self.members = list(members)
        self.batch_size = batch_size
        for m in self.members:
            m.eval()

    @property
    def embed_dim(self) -> int:
        return sum(m.embed_dim for m in self.members)

    def encode(self, modality: str, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """:math:`e^m` of rows given as each member's inputs (``inputs[k]`` for member k)."""
        parts = [
            torch.nn.functional.normalize(member.encode(modality, x, self.batch_size), dim=-1)
            for member, x in zip(self.members, inputs, strict=True)
        ]
        return torch.cat(parts, 1) / len(parts) ** 0.5

    def retrieval(
        self,
        inputs: Sequence[MemberInputs],
        present: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        pairs: Sequence[tuple[str, str]],
        by_class: bool,
    ) -> dict[str, float]:
        """Retrieval for each pair over rows holding both (as a server model reports it);
        ``inputs[k]`` are member k's featurized inputs of the same rows."""
        index = {m: torch.arange(len(labels)) for m in present}

        def encode(modality: str, rows: torch.Tensor) -> torch.Tensor:
            return self.encode(modality, [x[modality][rows] for x in inputs])

        return pairwise_retrieval(encode, index, present, labels, pairs, by_class)


def choose_members(
    scored: Sequence[tuple[str, float]], evaluate: Callable[[list[str]], float]
) -> tuple[list[str], dict[int, float]]:
    """The members to fuse, chosen on val: the top k sites by their own val rsum, for the k
    whose ensemble scores best on val (``evaluate(sites) -> val rsum``). Returns the chosen
    sites and every k's val rsum."""
    ranked = [s for s, _ in sorted(scored, key=lambda x: -x[1])]
    by_k = {k: evaluate(ranked[:k]) for k in range(1, len(ranked) + 1)}
    best = max(by_k, key=lambda k: (by_k[k], k))
    return ranked[:best], by_k
