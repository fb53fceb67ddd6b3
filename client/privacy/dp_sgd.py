"""DP-SGD on a site's private data (Opacus), with the CreamFL regularisers added after privatisation.

One step, with Poisson sampling at rate ``q = batch_size / N~`` (``N~`` the ledger's noisy count
of training units: samples, or groups for group-level privacy, where each sampled group
contributes one random row), batches and noise from a :class:`SecureRandom`:

1. per-sample private losses, decomposable by construction: class-head cross-entropy for rows
   holding one modality; for paired rows, InfoNCE of the pair against the round's *fixed* global
   representations of the public set as negatives (no in-batch negatives);
2. per-sample gradients of the whole model (both towers of a pair are one unit), clipped to
   ``C``, summed, noised with ``N(0, (sigma C)^2)``, scaled (``DPOptimizer.pre_step``); the
   accountant records the step;
3. the public regulariser's gradient, computed with the per-sample hooks off, is added;
4. the underlying optimizer steps.

Everything the site later sends is post-processing of these steps.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.nn import functional as F

from mmfl.client.privacy.budget import RoundPlan
from mmfl.client.privacy.ledger import Segment
from mmfl.client.privacy.secure_random import SecureRandom
from mmfl.config import PrivacyConfig
from mmfl.data.tensors import Tensors
from mmfl.models.multimodal import MultiEncoder
from mmfl.models.optim import adam

# Ghost clipping backpropagates twice through Opacus' full backward hooks, whose inputs need no
# gradient (frozen features); torch warns on every such pass although nothing is wrong.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


def grad_sample_mode(model: nn.Module, requested: str) -> str:
    """``auto`` is ghost clipping: on every default site model it was the faster engine
    (benchmarks/privacy/dp_overhead.py: 1.2-3x the non-private step against up to 6x with hooks,
    which materialise per-sample gradients of the word-embedding table)."""
    del model
    return "ghost" if requested == "auto" else requested


def private_losses(
    model: MultiEncoder,
    x: Tensors,
    globals_: dict[str, torch.Tensor],
    global_labels: dict[str, torch.Tensor],
    by_class: bool,
    temperature: float,
    device: torch.device,
) -> torch.Tensor:
    """(B,) per-sample losses; each depends on its own sample and round constants only.

    Paired rows: for each modality pair (a, b), ``CE([<u,v>, <u, G_b>] / tau, 0)`` both ways,
    where ``G_b`` are the global representations of the public rows (same-class rows left out
    on class-paired data, being right answers too). Rows holding one modality with a label:
    cross-entropy of that modality's class head.
    """
    mods = model.modalities
    labels = x.labels.to(device)
    present = {m: x.present[m].to(device) for m in mods}
    z = {m: model(m, x.inputs[m].to(device)) for m in mods}
    loss = torch.zeros(len(labels), device=device)
    for a, b in itertools.combinations(mods, 2):
        both = (present[a] & present[b]).float()
        if not both.any():
            continue
        for u, v, other in ((z[a], z[b], b), (z[b], z[a], a)):
            if other not in globals_:
                continue
            g = globals_[other].to(device)
            pos = (u * v).sum(1, keepdim=True) / temperature
            neg = u @ g.T / temperature
            if by_class:
                same = labels[:, None] == global_labels[other].to(device)[None, :]
                neg = neg.masked_fill(same & (labels[:, None] >= 0), float("-inf"))
            ce = F.cross_entropy(
                torch.cat([pos, neg], 1),
                torch.zeros(len(u), dtype=torch.long, device=device),
                reduction="none",
            )
            loss = loss + both * ce
    if len(model.heads):
        held = torch.stack([present[m] for m in mods]).sum(0)
        for m in mods:
            # Every parameter takes part in every step (Opacus needs a per-sample gradient for
            # each, zero where the mask is zero).
            rows = (present[m] & (held == 1) & (labels >= 0)).float()
            ce = F.cross_entropy(model.heads[m](z[m]), labels.clamp_min(0), reduction="none")
            loss = loss + rows * ce
    return loss


@dataclass
class PoissonSampler:
    """Poisson subsampling of units (samples, or groups with one random member each), every
    draw from the site's :class:`SecureRandom`: each unit joins a batch with probability
    ``sample_rate``, independently of the others and of every earlier batch."""

    groups: list[np.ndarray]  # unit -> training rows it may contribute
    sample_rate: float
    rng: SecureRandom

    @classmethod
    def build(
        cls, data_groups: list[str | None] | None, n: int, sample_rate: float, rng: SecureRandom
    ) -> PoissonSampler:
        """Units of ``n`` training rows: each row alone, or (``data_groups``: the group of each
        training row, in training-row order) the rows of each group together."""
        return cls(training_units(data_groups, n), sample_rate, rng)

    def draw(self) -> np.ndarray:
        take = np.flatnonzero(self.rng.uniform(len(self.groups)) < self.sample_rate)
        members = [self.groups[i] for i in take]
        which = self.rng.below(np.array([len(g) for g in members], dtype=np.int64))
        return np.array([g[k] for g, k in zip(members, which, strict=True)], dtype=int)


def training_units(data_groups: list[str | None] | None, n: int) -> list[np.ndarray]:
    """The privacy units over ``n`` training rows (see :meth:`PoissonSampler.build`)."""
    if data_groups is None:
        return [np.array([i]) for i in range(n)]
    if len(data_groups) != n:
        raise ValueError(f"{len(data_groups)} group ids for {n} training rows")
    by: dict[str, list[int]] = {}
    for i, g in enumerate(data_groups):
        if g is None:
            raise ValueError("group-level privacy needs a group id on every private row")
        by.setdefault(g, []).append(i)
    return [np.array(v) for _, v in sorted(by.items())]


class _SecureNoise:
    """Gaussian noise from the site's :class:`SecureRandom` instead of torch's seeded
    generator (Opacus' ``secure_mode`` needs torchcsprng, which current torch lacks)."""

    secure_random: SecureRandom

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm  # type: ignore[attr-defined]
        params = self.params  # type: ignore[attr-defined]
        for p in params:
            _check_processed_flag(p.summed_grad)
        sizes = [p.summed_grad.numel() for p in params]
        noise = self.secure_random.normal((sum(sizes),), std) if std > 0 else torch.zeros(sum(sizes))
        for p, chunk in zip(params, torch.split(noise, sizes), strict=True):
            summed = p.summed_grad
            p.grad = (summed + chunk.to(summed.device, summed.dtype).view_as(summed)).view_as(p)
            _mark_as_processed(summed)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus' DP optimizer (per-sample gradients from hooks) with secure noise."""


class SecureDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping DP optimizer with secure noise."""


class PrivateTraining:
    """Opacus around a site model for one round; :meth:`close` restores the plain module."""

    def __init__(
        self,
        model: MultiEncoder,
        config: PrivacyConfig,
        lr: float,
        weight_decay: float,
        noise_multiplier: float,
        sample_rate: float,
        expected_batch_size: int,
        history: list[Segment],
        rng: SecureRandom,
    ) -> None:
        self.model = model
        self.mode = grad_sample_mode(model, config.grad_sample_mode)
        self.accountant = create_accountant(config.accountant)
        self.accountant.history = [tuple(h) for h in history]  # type: ignore[misc]
        base = adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        common = {
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": config.max_grad_norm,
            "expected_batch_size": expected_batch_size,
            "loss_reduction": "mean",
        }
        if self.mode == "ghost":
            self.gsm: nn.Module = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=config.max_grad_norm,
                use_ghost_clipping=True,
            )
            self.optimizer: DPOptimizer = SecureDPOptimizerFastGradientClipping(base, **common)
        else:
            self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
            self.optimizer = SecureDPOptimizer(base, **common)
        self.optimizer.secure_random = rng  # type: ignore[attr-defined]
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        self.sample_rate = sample_rate
        self.steps = 0

    def step(
        self,
        per_sample: Callable[[], torch.Tensor],
        public: Callable[[], torch.Tensor | None] | None,
        public_weight: float = 1.0,
    ) -> float:
        """One DP-SGD step; ``per_sample`` returns (B,) private losses (B may be 0)."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = per_sample()
        if len(losses) == 0:
            # An empty Poisson batch still releases a noised (zero) sum: same accounting.
            for p in self.model.parameters():
                if not p.requires_grad:
                    continue
                if self.mode == "ghost":  # ghost clipping hands Opacus the clipped sum in p.grad
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device)  # type: ignore[attr-defined]
        elif self.mode == "ghost":
            DPTensorFastGradientClipping(self.gsm, self.optimizer, losses, "mean").backward()  # type: ignore[arg-type]
        else:
            losses.mean().backward()
        self.optimizer.pre_step()  # clip, noise, scale; the accountant records the step
        if public is not None:
            self._add_public_gradient(public, public_weight)
        self.optimizer.original_optimizer.step()
        self.steps += 1
        return float(losses.detach().mean()) if len(losses) else float("nan")

    def _add_public_gradient(self, public: Callable[[], torch.Tensor | None], weight: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.gsm.disable_hooks()  # type: ignore[operator]
        try:
            with warnings.catch_warnings():  # hooks are off; torch still notes that they are registered
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss = public()
                if loss is None:
                    return
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            self.gsm.enable_hooks()  # type: ignore[operator]
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g * weight if p.grad is None else p.grad + weight * g

    @property
    def history(self) -> list[Segment]:
        return [tuple(h) for h in self.accountant.history]  # type: ignore[misc]

    def close(self) -> None:
        """Remove Opacus' hooks so the plain model can be saved and reused."""
        if hasattr(self.gsm, "_close"):
            self.gsm._close()
        for p in self.model.parameters():
            for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)


def run_private_round(
    model: MultiEncoder,
    train: Tensors,
    groups: list[str | None] | None,
    plan: RoundPlan,
    config: PrivacyConfig,
    lr: float,
    weight_decay: float,
    history: list[list[float]],
    per_sample: Callable[[Tensors], torch.Tensor],
    public: Callable[[], torch.Tensor | None] | None,
) -> list[Segment]:
    """``plan.steps`` DP-SGD steps on ``train`` (Poisson batches of its units, noise and
    batches from a fresh :class:`SecureRandom`); returns the accountant's history after them,
    which must equal the ledger's history plus the plan's segment."""
    rng = SecureRandom()
    sampler = PoissonSampler.build(groups, len(train), plan.sample_rate, rng)
    dp = PrivateTraining(
        model,
        config,
        lr,
        weight_decay,
        plan.noise_multiplier,
        plan.sample_rate,
        max(1, round(plan.sample_rate * plan.units)),
        [tuple(h) for h in history],  # type: ignore[misc]
        rng,
    )
    model.train()
    try:
        for _ in range(plan.steps):
            batch = train.subset(sampler.draw())
            dp.step(lambda batch=batch: per_sample(batch), public)
    finally:
        dp.close()
    return dp.history
