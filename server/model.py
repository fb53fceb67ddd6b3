"""The coordinator's own model: trained on its data, encodes the public set, distils.

Per round (data flow steps 1, 2 and 6 of the design):

1. ``train_epoch``: one epoch of the multimodal task loss on the server's own data (the
   public set; for the ``centralized`` baseline also the sites' pooled data).
2. ``encode``: eval-mode representations of the public rows (the global representations).
6. ``distill``: one epoch toward the aggregated representations :math:`\\hat v`, per modality
   with aggregated targets, weight ``kd_weight`` counted once:
   ``mse`` (the reference): :math:`\\lambda \\cdot \\mathrm{MSE}(f(x_j), \\hat v_j)`;
   ``contrastive``: :math:`\\lambda \\cdot \\mathrm{InfoNCE}(f(x_j), \\hat v / |\\hat v|)` over the batch.

``regress`` (instead of 6): passes over the round's mixed public items toward the sites'
concatenated representations, through one map per site (:mod:`mmfl.strategies.regression`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mmfl.config import CreamConfig, ServerConfig
from mmfl.data.mixing import mixed_inputs
from mmfl.data.tensors import Tensors
from mmfl.models.losses import distill_contrastive, distill_mse, multimodal_task_loss
from mmfl.models.metrics import pairwise_retrieval
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.models.optim import adam
from mmfl.protocols.messages import MixPlan
from mmfl.strategies.regression import SiteMaps, concatenated_targets, regression_loss


class ServerTrainer:
    """Owns the server model and its optimizer (both go into checkpoints)."""

    def __init__(
        self,
        model: MultiEncoder,
        config: ServerConfig,
        cream: CreamConfig,
        by_class: bool,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.config = config
        self.cream = cream
        self.by_class = by_class
        self.device = device
        self.optimizer = adam(self.model.parameters(), lr=config.lr)
        self.velocity: dict[str, np.ndarray] | None = None  # FedAvgM's server momentum
        self.site_maps: SiteMaps | None = None  # representation regression's per-site maps
        self.maps_optimizer: torch.optim.Optimizer | None = None

    def train_epoch(self, data: Tensors, rng: np.random.Generator) -> float:
        """One epoch of the task loss over ``data``; returns the mean batch loss."""
        self.model.train()
        losses = []
        for b in batches(len(data), self.config.batch_size, rng):
            loss = multimodal_task_loss(
                self.model, data.subset(b), self.by_class, self.config.temperature, self.device
            )
            if loss is None:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def encode(self, data: Tensors, rows: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
        """Eval-mode representations of ``rows[m]`` for each modality m."""
        return {
            m: self.model.encode(
                m, data.inputs[m][torch.as_tensor(r, dtype=torch.long)], self.config.eval_batch_size
            )
            for m, r in rows.items()
        }

    def distill(
        self,
        data: Tensors,
        rows: Mapping[str, Sequence[int]],
        targets: Mapping[str, torch.Tensor],
        rng: np.random.Generator,
    ) -> float:
        """One epoch toward the aggregated representations; returns the mean batch loss."""
        if not targets:
            return float("nan")
        self.model.train()
        # One pass over the union of rows with a target; each batch sums the modalities'
        # terms for the rows that hold a target of that modality.
        lookup = {m: {r: i for i, r in enumerate(rows[m])} for m in targets}
        union = sorted(set().union(*(set(rows[m]) for m in targets)))
        cross = self.cream.distill_cross_modal and self.cream.distill_loss == "contrastive"
        students = [m for m in self.model.modalities if m in targets or cross]
        losses = []
        for b in batches(len(union), self.config.batch_size, rng):
            batch_rows = [union[i] for i in b]
            terms = []
            for m in students:
                for source, target in targets.items():
                    if source != m and not cross:
                        continue
                    have = [
                        (r, lookup[source][r])
                        for r in batch_rows
                        if r in lookup[source] and bool(data.present[m][r])
                    ]
                    if len(have) < 2:
                        continue
                    x = data.inputs[m][torch.as_tensor([r for r, _ in have])].to(self.device)
                    t = target[torch.as_tensor([i for _, i in have])].to(self.device)
                    z = self.model(m, x)
                    if self.cream.distill_loss == "mse":
                        terms.append(distill_mse(z, t))
                    else:
                        terms.append(distill_contrastive(z, t, self.cream.distill_temperature))
            if not terms:
                continue
            loss = self.cream.kd_weight * torch.stack(terms).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def regress(
        self,
        public: Tensors,
        plan: MixPlan,
        contributions: Mapping[str, Mapping[str, torch.Tensor]],
        weight: float,
        passes: int,
        rng: np.random.Generator,
    ) -> float:
        """``passes`` passes over the plan's mixed items toward the sites' concatenated
        representations (:mod:`mmfl.strategies.regression`); ``contributions[site][m]`` holds
        one row per item. Returns the mean batch loss."""
        if not contributions:
            return float("nan")
        sites = sorted(contributions)
        if self.site_maps is None:
            self.site_maps = SiteMaps(self.model.embed_dim)
        new = self.site_maps.ensure(sites)
        self.site_maps.to(self.device)
        for p in new:  # one parameter group per site, in creation order (as load_state_dict rebuilds)
            if self.maps_optimizer is None:
                self.maps_optimizer = adam([p], lr=self.config.lr)
            else:
                self.maps_optimizer.add_param_group({"params": [p]})
        by_modality = {
            m: [s for s in sites if m in contributions[s]] for m in self.model.modalities if m in plan.weight
        }
        by_modality = {m: ids for m, ids in by_modality.items() if ids}
        self.model.train()
        losses = []
        for _ in range(passes):
            for b in batches(len(plan.first), self.config.batch_size, rng):
                idx = torch.as_tensor(b, dtype=torch.long)
                own = {
                    m: self.model(m, mixed_inputs(public.inputs[m], plan, m, b.tolist()).to(self.device))
                    for m in by_modality
                }
                targets = {
                    m: concatenated_targets([contributions[s][m][idx] for s in ids]).to(self.device)
                    for m, ids in by_modality.items()
                }
                loss = weight * regression_loss(self.site_maps, own, targets, by_modality)
                self.optimizer.zero_grad(set_to_none=True)
                assert self.maps_optimizer is not None
                self.maps_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.maps_optimizer.step()
                losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def retrieval(self, data: Tensors, pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
        """Retrieval metrics for each modality pair (:func:`~mmfl.models.metrics.pairwise_retrieval`)."""
        encode = lambda m, x: self.model.encode(m, x, self.config.eval_batch_size)  # noqa: E731
        return pairwise_retrieval(encode, data.inputs, data.present, data.labels, pairs, self.by_class)

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.velocity is not None:
            state["velocity"] = {k: torch.from_numpy(v) for k, v in self.velocity.items()}
        if self.site_maps is not None and self.maps_optimizer is not None:
            state["site_maps"] = {
                "sites": self.site_maps.site_ids(),
                "maps": self.site_maps.state_dict(),
                "optimizer": self.maps_optimizer.state_dict(),
            }
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else {k: v.numpy() for k, v in velocity.items()}  # type: ignore[union-attr]
        maps = state.get("site_maps")
        if maps is not None:
            self.site_maps = SiteMaps(self.model.embed_dim)
            for site in maps["sites"]:  # type: ignore[index]
                self.site_maps.ensure([site])
            self.site_maps.load_state_dict(maps["maps"])  # type: ignore[index]
            self.site_maps.to(self.device)
            groups = [list(m.parameters()) for m in self.site_maps.maps.values()]
            self.maps_optimizer = adam(groups[0], lr=self.config.lr)
            for g in groups[1:]:
                self.maps_optimizer.add_param_group({"params": g})
            self.maps_optimizer.load_state_dict(maps["optimizer"])  # type: ignore[index]
