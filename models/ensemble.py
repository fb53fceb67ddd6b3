r"""The sites' released models as one model: similarity fusion.

For members :math:`k = 1..K` (sites holding every modality of the run), each with its own
featurizers and encoders :math:`f^m_k`, the ensemble scores a pair by the sum of the members'
cosine similarities, which is a dot product of concatenations:

.. math::

    S(x, y) = \frac1K \sum_k \cos\big(f^a_k(x), f^b_k(y)\big)
            = e^a(x) \cdot e^b(y), \qquad
    e^m(x) = \tfrac{1}{\sqrt K}\,\big[\hat f^m_1(x), \dots, \hat f^m_K(x)\big]

so :math:`e^m` (unit norm, dimension :math:`K d`; :func:`fuse`) is the ensemble's embedding: a model
like any other for retrieval, embedding and export. Members are chosen on val (:func:`choose_members`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def fuse(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """:math:`e^m` from the members' representations of the same rows (``parts[k]``, each
    ``(n, d)``); one member's are returned as they are (a server model's, bit for bit)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([torch.nn.functional.normalize(z, dim=-1) for z in parts], 1) / len(parts) ** 0.5


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
