"""A site's local training in one round: the private task loss and the CreamFL regularisers.

Private task loss, per batch of private rows:

* rows holding every modality of a paired site: symmetric InfoNCE per modality pair
  (positives: the pair, or on class-paired data every same-class item);
* labeled rows holding a single modality (all rows of a uni-modal site, and rows of a paired
  site that miss a modality): cross-entropy of that modality's class head.

Regularisers on this round's public rows (constants: the global representations ``g`` and the
site's model from the start of the round ``old``), weight ``w`` (0.5), temperature 0.5:

    L_pub = w * ( sum_o L_inter(z^m, g^o)  +  mean_m L_intra(z^m; g^m, old^m) )

``sequential`` (the reference code, default): per local epoch, a private epoch, then a public
epoch. ``additive`` (the paper): each step minimises L_task + L_pub on a private and a public
batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mmfl.data.tensors import Tensors
from mmfl.models.losses import inter_modal, intra_modal, multimodal_task_loss
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.models.optim import adam
from mmfl.protocols.messages import TrainSettings


@dataclass
class PublicRound:
    """This round's public rows and the global representations to contrast against.

    ``tensors`` are the round's public rows; ``globals_[m]`` holds the global representation
    of each row in ``row_of[m]`` order; ``position[m][i]`` is where row i sits in
    ``globals_[m]`` (-1 if the row lacks m).
    """

    tensors: Tensors
    globals_: dict[str, torch.Tensor]
    position: dict[str, torch.Tensor]


def public_loss(
    model: MultiEncoder,
    old: MultiEncoder,
    pub: PublicRound,
    rows: np.ndarray,
    settings: TrainSettings,
    device: torch.device,
) -> torch.Tensor | None:
    """CreamFL's inter- and intra-modal regularisers on public rows ``rows``."""
    tau = settings.contrast_temperature
    inter_terms, intra_terms = [], []
    for m in model.modalities:
        if m not in pub.globals_:
            continue
        idx = torch.as_tensor(rows)[pub.tensors.present[m][rows]]
        if len(idx) == 0:
            continue
        x = pub.tensors.inputs[m][idx].to(device)
        z = model(m, x)
        with torch.no_grad():
            z_old = old(m, x)
        g_same = pub.globals_[m].to(device)[pub.position[m][idx].to(device)]
        intra_terms.append(intra_modal(z, g_same, z_old, tau))
        for o, g_other in pub.globals_.items():
            if o == m:
                continue
            where = pub.position[o][idx]
            keep = where >= 0
            if keep.any():
                inter_terms.append(
                    inter_modal(z[keep.to(device)], g_other.to(device), where[keep].to(device), tau)
                )
    if not inter_terms and not intra_terms:
        return None
    total = torch.stack(inter_terms).sum() if inter_terms else torch.zeros((), device=device)
    if intra_terms:
        total = total + torch.stack(intra_terms).mean()
    return settings.interintra_weight * total


def _steps(loss: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> float | None:
    if loss is None:
        return None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def proximal_term(model: MultiEncoder, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    r"""FedProx: :math:`\tfrac{\mu}{2} \sum_p \lVert p - p_{global} \rVert^2` over the trainable parameters."""
    return 0.5 * mu * torch.stack([((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters()]).sum()


def train_round(
    model: MultiEncoder,
    old: MultiEncoder | None,
    private: Tensors,
    pub: PublicRound | None,
    settings: TrainSettings,
    by_class: bool,
    task_temperature: float,
    rng: np.random.Generator,
    device: torch.device,
    anchor: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``settings.local_epochs``; returns mean losses. With
    ``anchor`` (the global weights) and ``settings.proximal_mu > 0`` every private step adds
    FedProx's proximal term."""
    if settings.local_epochs == 0:
        return {}  # a site that only represents (regress past its teacher rounds)
    prox = anchor is not None and settings.proximal_mu > 0
    optimizer = adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    task_losses: list[float] = []
    pub_losses: list[float] = []
    use_public = settings.regularisers and pub is not None and old is not None and len(pub.tensors) > 0
    for _ in range(settings.local_epochs):
        private_batches = batches(len(private), settings.batch_size, rng)
        if settings.regulariser_mode == "additive" and use_public:
            assert pub is not None and old is not None
            public_cycle: Iterator[np.ndarray] = itertools.cycle(
                batches(len(pub.tensors), settings.public_batch_size, rng)
            )
            for b in private_batches:
                t = multimodal_task_loss(model, private.subset(b), by_class, task_temperature, device)
                p = public_loss(model, old, pub, next(public_cycle), settings, device)
                parts = [v for v in (t, p) if v is not None]
                if parts:
                    _steps(torch.stack(parts).sum(), optimizer)
                    task_losses += [float(t.detach())] if t is not None else []
                    pub_losses += [float(p.detach())] if p is not None else []
            continue
        for b in private_batches:
            loss = multimodal_task_loss(model, private.subset(b), by_class, task_temperature, device)
            if prox and loss is not None:
                assert anchor is not None
                loss = loss + proximal_term(model, anchor, settings.proximal_mu)
            value = _steps(loss, optimizer)
            if value is not None:
                task_losses.append(value)
        if use_public:
            assert pub is not None and old is not None
            for b in batches(len(pub.tensors), settings.public_batch_size, rng):
                value = _steps(public_loss(model, old, pub, b, settings, device), optimizer)
                if value is not None:
                    pub_losses.append(value)
    out = {"task_loss": float(np.mean(task_losses)) if task_losses else float("nan")}
    if use_public:
        out["public_loss"] = float(np.mean(pub_losses)) if pub_losses else float("nan")
    return out


def encode_rows(
    model: MultiEncoder, tensors: Tensors, rows_by_modality: Mapping[str, list[int]], batch_size: int = 512
) -> dict[str, np.ndarray]:
    """Eval-mode representations of the requested rows of each modality the model holds."""
    out = {}
    for m in model.modalities:
        rows = rows_by_modality.get(m)
        if rows is None:
            continue
        x = tensors.inputs[m][torch.as_tensor(rows, dtype=torch.long)]
        out[m] = model.encode(m, x, batch_size).numpy()
    return out
