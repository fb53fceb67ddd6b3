"""Losses shared by sites and the server.

Notation: ``z`` are L2-normalised representations (rows), ``g`` the server's global
representations of the public set (constants), ``tau`` a fixed temperature.

* Paired contrast (task loss of paired sites, the server's own training): symmetric InfoNCE
  with soft targets spread over the positives of each row (the pair itself; on class-paired
  data every item of the same class).
* CreamFL inter-modal regulariser: ``-log softmax_m(<z_j, g_m^o> / tau)[j]`` over the global
  representations of another modality ``o``.
* CreamFL intra-modal regulariser (MOON-style): positive ``<z_j, g_j^same>``, single negative
  ``<z_j, z_j^old>`` from the site's model of the previous round.
* Distillation toward aggregated targets ``a``: MSE (the reference), or InfoNCE between
  ``z_j`` and the targets of the batch (transfers the targets' relative structure).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from mmfl.data.tensors import Tensors
    from mmfl.models.multimodal import MultiEncoder


def positives_matrix(labels_a: torch.Tensor, labels_b: torch.Tensor, by_class: bool) -> torch.Tensor:
    """Boolean (B, B): True where column j is a right answer for row i."""
    eye = torch.eye(len(labels_a), dtype=torch.bool, device=labels_a.device)
    if not by_class:
        return eye
    same = (labels_a[:, None] == labels_b[None, :]) & (labels_a[:, None] >= 0)
    return same | eye


def paired_contrastive(
    za: torch.Tensor, zb: torch.Tensor, positives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets over ``positives`` (mean over rows, both ways)."""
    logits = za @ zb.T / temperature
    targets = positives.to(logits.dtype)
    loss_ab = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    targets_t = targets.T
    loss_ba = -(targets_t / targets_t.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (loss_ab + loss_ba)


def inter_modal(z: torch.Tensor, global_other: torch.Tensor, rows: torch.Tensor, tau: float) -> torch.Tensor:
    """CreamFL L_inter: cross-entropy of ``z`` against all rows of ``global_other``; the
    right answer for ``z[i]`` is ``global_other[rows[i]]``. Mean over the batch."""
    return F.cross_entropy(z @ global_other.T / tau, rows)


def intra_modal(z: torch.Tensor, global_same: torch.Tensor, z_old: torch.Tensor, tau: float) -> torch.Tensor:
    """CreamFL L_intra: 2-way cross-entropy, positive ``<z, g>``, negative ``<z, z_old>``."""
    pos = (z * global_same).sum(1, keepdim=True) / tau
    neg = (z * z_old).sum(1, keepdim=True) / tau
    return F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(len(z), dtype=torch.long, device=z.device))


def distill_mse(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference code's distillation: ``nn.MSELoss()`` (mean over batch and dimensions)."""
    return F.mse_loss(z, target)


def distill_contrastive(z: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE from ``z[j]`` to the (re-normalised) aggregated target of the same sample, with
    the batch's other targets as negatives: the student learns where each sample sits relative
    to the others, not only the target's coordinates."""
    t = F.normalize(target, dim=-1)
    return F.cross_entropy(z @ t.T / tau, torch.arange(len(z), device=z.device))


def multimodal_task_loss(
    model: MultiEncoder, x: Tensors, by_class: bool, temperature: float, device: torch.device
) -> torch.Tensor | None:
    """Task loss of one batch (None when the batch holds nothing usable).

    Rows holding both modalities of a pair: symmetric InfoNCE for that pair. Labeled
    rows holding a single modality: cross-entropy of that modality's class head.
    """
    mods = model.modalities
    labels = x.labels.to(device)
    terms: list[torch.Tensor] = []
    z = {m: model(m, x.inputs[m].to(device)) for m in mods}
    for a, b in itertools.combinations(mods, 2):
        both = x.complete_rows([a, b]).to(device)
        if len(both) > 1:
            pos = positives_matrix(labels[both], labels[both], by_class)
            terms.append(paired_contrastive(z[a][both], z[b][both], pos, temperature))
    if len(model.heads):
        held = torch.stack([x.present[m] for m in mods]).sum(0).to(device)
        for m in mods:
            rows = torch.nonzero(x.present[m].to(device) & (held == 1) & (labels >= 0)).flatten()
            if len(rows):
                logits = model.heads[m](z[m][rows])
                terms.append(F.cross_entropy(logits, labels[rows]))
    return torch.stack(terms).sum() if terms else None
