"""Mixed public items: new inputs built from pairs of public rows, identical at every party.

Item k of modality m, from public rows :math:`i = first_k`, :math:`j = second_k` with weight
:math:`\\lambda = weight^m_k`:

* dense inputs (features, pixels): :math:`\\lambda x_i + (1 - \\lambda) x_j`;
* token ids: slot s comes from :math:`x_i` when :math:`\\{(s + 1)\\varphi + k\\psi\\} < \\lambda`
  (``{.}`` the fractional part, :math:`\\varphi, \\psi` irrational), else from :math:`x_j` — a
  fixed pattern with a share :math:`\\approx\\lambda` of slots from i, so every site builds the
  same item without sharing a random state.

Image and text draw their own :math:`\\lambda \\sim U(0, 1)`, so a mixed image is not the
mixture of its mixed text's pair: the items are new points, which no teacher has memorised.
A modality with unpaired pool rows replaces a share of its items by pool items
(:class:`~mmfl.protocols.messages.MixRows`). Built from the public set alone, they cost no privacy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from mmfl.protocols.messages import MixPlan, MixRows

_PHI = 0.6180339887498949
_PSI = 0.7548776662466927


def draw_mix_plan(
    rng: np.random.Generator,
    rows: Sequence[int],
    items: int,
    modalities: Sequence[str],
    pool: Mapping[str, Sequence[int]] | None = None,
    pool_share: float | None = None,
) -> MixPlan:
    """``items`` mixed items over public ``rows`` (each row first about equally often).

    A modality with unpaired ``pool`` rows (public rows holding it alone) replaces a share of its
    items (each with probability ``pool_share``; None: the pool's share of the rows) by pool
    items: first row from the pool, second from the rows and the pool together
    (``MixPlan.own_rows``). The regression's loss is per modality, so a modality's items need
    not pair with another's; the other items stay those of the plan drawn without a pool."""
    rows_ = np.asarray(rows)
    first = rows_[np.resize(rng.permutation(len(rows_)), items)]
    second = rows_[rng.integers(0, len(rows_), items)]
    weight = {m: rng.uniform(0, 1, items).tolist() for m in modalities}
    own_rows = {}
    for m in modalities:
        extra = np.asarray(list((pool or {}).get(m, ())), dtype=int)
        share = len(extra) / (len(extra) + len(rows_)) if pool_share is None else pool_share
        if len(extra) == 0 or share == 0:
            continue
        replaced = rng.random(items) < share
        n = int(replaced.sum())
        both = np.concatenate([rows_, extra])
        first_m, second_m = first.copy(), second.copy()
        first_m[replaced] = extra[np.resize(rng.permutation(len(extra)), n)]
        second_m[replaced] = both[rng.integers(0, len(both), n)]
        own_rows[m] = MixRows(first=first_m.tolist(), second=second_m.tolist())
    return MixPlan(first=first.tolist(), second=second.tolist(), weight=weight, own_rows=own_rows)


def mixed_inputs(
    x: torch.Tensor, plan: MixPlan, modality: str, items: Sequence[int] | range | None = None
) -> torch.Tensor:
    """The plan's ``items`` (indices into the plan; all when None) of ``modality``, built from
    the public inputs ``x``. An item is the same whichever batch or chunk it is built in."""
    chosen = range(len(plan.first)) if items is None else list(items)
    first, second = plan.rows_of(modality)
    k = torch.as_tensor(chosen, dtype=torch.long)
    i = torch.as_tensor([first[t] for t in chosen], dtype=torch.long)
    j = torch.as_tensor([second[t] for t in chosen], dtype=torch.long)
    lam = torch.as_tensor([plan.weight[modality][t] for t in chosen], dtype=torch.float32)
    a, b = x[i], x[j]
    if not torch.is_floating_point(x):
        slots = torch.arange(1, x.shape[1] + 1, dtype=torch.float64) * _PHI
        pattern = torch.frac(slots[None, :] + k.double()[:, None] * _PSI) < lam[:, None].double()
        return torch.where(pattern.view(pattern.shape + (1,) * (x.dim() - 2)), a, b)
    w = lam.view((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    return w * a + (1 - w) * b


class Encoder(Protocol):
    """What :func:`encode_mixed` needs of a model (:class:`~mmfl.models.multimodal.MultiEncoder`)."""

    @property
    def modalities(self) -> Sequence[str]: ...

    def encode(self, modality: str, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor: ...


def encode_mixed(
    model: Encoder, inputs: Mapping[str, torch.Tensor], plan: MixPlan, chunk: int = 1024
) -> dict[str, np.ndarray]:
    """Eval-mode representations of the plan's mixed items, built from the public ``inputs``,
    for each modality the model holds (``chunk`` items at a time: a mixed item is as large as a
    public input). A site and the coordinator (for a group's model) encode alike."""
    out = {}
    for m in model.modalities:
        if m not in plan.weight:
            continue
        n = len(plan.first)
        parts = [
            model.encode(m, mixed_inputs(inputs[m], plan, m, range(s, min(s + chunk, n))), chunk)
            for s in range(0, n, chunk)
        ]
        out[m] = torch.cat(parts).numpy()
    return out
