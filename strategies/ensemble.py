r"""The global-local cross-modal contrastive ensemble (CreamFL ``con_w``), computed in chunks.

For modality m, contributors k = 1..K each sent representations :math:`v_j^k` of the public
rows j that hold m. For another modality o with global representations :math:`g^o_l`
(l over this round's rows that hold o) the score of contributor k on row j is

.. math::

    s_j^k = \frac{\langle v_j^k, g^o_j\rangle}{T} - \log \sum_l \exp\frac{\langle v_j^k, g^o_l\rangle}{T}

(a log-softmax over all public rows of the other modality; ``T = 1`` in the reference code).
With several other modalities the scores are averaged over those the row holds. Weights are a
softmax over contributors per row, and the aggregate is the weighted sum (not re-normalised):

.. math::

    \alpha_j^k = \frac{e^{s_j^k}}{\sum_{k'} e^{s_j^{k'}}}, \qquad \hat v_j = \sum_k \alpha_j^k v_j^k

The log-sum-exp runs over ``chunk`` rows at a time, so memory is O(chunk x N), never N x N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OtherModality:
    """Global representations of another modality and where each row of m sits in them.

    ``position[j]`` is the row of ``global_reps`` holding sample j, or -1 if j lacks it.
    """

    global_reps: torch.Tensor  # (N_o, d)
    position: torch.Tensor  # (n,) long


def contrastive_scores(
    local: torch.Tensor, other: OtherModality, temperature: float = 1.0, chunk: int = 1024
) -> torch.Tensor:
    """:math:`s_j` for one contributor against one other modality; NaN where j lacks it."""
    n = len(local)
    scores = torch.full((n,), float("nan"), dtype=torch.float32)
    valid = torch.nonzero(other.position >= 0).flatten()
    g = other.global_reps.to(torch.float32)
    for start in range(0, len(valid), chunk):
        rows = valid[start : start + chunk]
        v = local[rows].to(torch.float32)
        lse = torch.logsumexp(v @ g.T / temperature, dim=1)
        pos = (v * g[other.position[rows]]).sum(1) / temperature
        scores[rows] = pos - lse
    return scores


def contrastive_weights(
    locals_: Sequence[torch.Tensor],
    others: Sequence[OtherModality],
    temperature: float = 1.0,
    chunk: int = 1024,
) -> torch.Tensor:
    """(K, n) weights: per row, a softmax over contributors of their mean score."""
    per_site = []
    for v in locals_:
        s = torch.stack([contrastive_scores(v, o, temperature, chunk) for o in others])  # (O, n)
        held = ~torch.isnan(s)
        mean = torch.where(held, s, torch.zeros_like(s)).sum(0) / held.sum(0).clamp_min(1)
        per_site.append(mean)  # rows holding no other modality score 0 for everyone: uniform
    return torch.softmax(torch.stack(per_site), dim=0)


def weighted_sum(locals_: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_k w_k \\odot v^k`, accumulated one contributor at a time."""
    out = torch.zeros_like(locals_[0], dtype=torch.float32)
    for w, v in zip(weights, locals_, strict=True):
        out += w[:, None] * v.to(torch.float32)
    return out


def uniform_weights(k: int, n: int) -> torch.Tensor:
    return torch.full((k, n), 1.0 / k)


def weight_entropy(weights: torch.Tensor) -> float:
    """Mean entropy of the per-row weights (log K when uniform): how selective the ensemble is."""
    w = weights.clamp_min(1e-12)
    return float(-(w * w.log()).sum(0).mean())
