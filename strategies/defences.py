r"""Defences of the representation ensemble against hostile or broken sites, applied to the
rule's (K, n) weights before the weighted sum. Pure tensor math.

* **Trim** (per-sample trimmed ensemble): for each row j, the ``trim`` contributors farthest
  from the contributors' coordinate-wise median :math:`m_j = \mathrm{median}_k v_j^k` get weight
  0 (only while more than :math:`2\,\mathrm{trim}` contributors remain), the rest are renormalised.
* **Cap**: no contributor holds more than ``cap`` of a row's weight; the excess is shared by the
  others in proportion to their weights (water-filling), so :math:`\sum_k \alpha_j^k = 1` stays.

A third defence, refusing a reply whose rows are not unit vectors, is a check of the reply
(:func:`mmfl.server.exchange.read_represent_reply`), not of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def trim_far(
    contributions: Sequence[torch.Tensor], weights: torch.Tensor, trim: int, chunk: int = 4096
) -> torch.Tensor:
    """``weights`` with each row's ``trim`` contributors farthest from the median zeroed."""
    k = len(contributions)
    if trim <= 0 or k <= 2 * trim:
        return weights
    out = weights.clone()
    n = weights.shape[1]
    for start in range(0, n, chunk):
        block = torch.stack([c[start : start + chunk].to(torch.float32) for c in contributions])  # (K, b, d)
        median = block.median(dim=0).values
        far = (block - median).norm(dim=2).topk(trim, dim=0).indices  # (trim, b)
        out[:, start : start + chunk].scatter_(0, far, 0.0)
    total = out.sum(0, keepdim=True)
    return torch.where(total > 0, out / total.clamp_min(1e-12), weights)


def cap_weights(weights: torch.Tensor, cap: float) -> torch.Tensor:
    """Per row (column), no weight above ``cap`` (at least 1/K); the sum stays 1."""
    k = weights.shape[0]
    cap = max(cap, 1.0 / k)
    if cap >= 1.0:
        return weights
    w = weights.clone()
    for _ in range(k):
        over = w > cap + 1e-7
        if not over.any():
            break
        excess = (w - cap).clamp_min(0).sum(0)
        w = torch.where(over, torch.full_like(w, cap), w)
        free = (~over) & (w < cap)
        room = torch.where(free, w, torch.zeros_like(w))
        share = torch.where(
            room.sum(0) > 0,
            room / room.sum(0).clamp_min(1e-12),
            free.float() / free.float().sum(0).clamp_min(1),
        )
        w = w + share * excess
    return w
