"""One DP-SGD round at a site, from budget to durable ledger (Opacus does the steps).

Order, each step before the next: plan the round against the budget (the noise multiplier and
the epsilon after it, computed once), commit that epsilon to the ledger, train, check that the
accountant recorded exactly the committed mechanism. A refusal or failure at any step leaves
nothing to send (:class:`~mmfl.client.privacy.budget.PrivacyRefusal`, :class:`~mmfl.client.privacy.ledger.LedgerError`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmfl.client.privacy.budget import PrivacyBudget, RoundPlan
from mmfl.client.privacy.ledger import LedgerError
from mmfl.client.site_data import SiteData
from mmfl.client.training import encode_rows
from mmfl.models.multimodal import MultiEncoder
from mmfl.protocols.messages import TrainSettings


def public_negatives(
    model: MultiEncoder, data: SiteData
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's own representations of every public row holding each of its modalities
    (the pool left out), and their labels: the negatives of a DP round that received no global
    representations."""
    public = data.public_training
    rows = {m: [i for i in range(len(public)) if bool(public.present[m][i])] for m in model.modalities}
    negatives = {m: torch.from_numpy(v) for m, v in encode_rows(model, public, rows).items()}
    labels = {m: public.labels[torch.as_tensor(r, dtype=torch.long)] for m, r in rows.items()}
    return negatives, labels


def train_private(
    budget: PrivacyBudget,
    data: SiteData,
    model: MultiEncoder,
    run_id: str,
    round_: int,
    settings: TrainSettings,
    negatives: dict[str, torch.Tensor],
    negative_labels: dict[str, torch.Tensor],
    public_term: Callable[[], torch.Tensor | None] | None,
    device: torch.device,
    fresh_from: int | None = None,
) -> tuple[dict[str, float], RoundPlan]:
    """A DP-SGD round: planned and checked against the budget before any gradient, the
    mechanism at run time checked against the plan, the ledger durable before this returns
    (and so before any reply).

    Private losses use ``negatives`` (representations of public rows, fixed for the round)
    as the only negatives, so each sample's loss depends on that sample alone.
    """
    # Opacus takes seconds to import; sites without DP never load it.
    from mmfl.client.privacy.dp_sgd import private_losses, run_private_round

    with budget.exclusive():  # planning to commit: one DP round at a time
        ledger = budget.open(data.data_key, data.training_units)
        plan = budget.plan(ledger, data.data_key, settings.batch_size, settings.local_epochs)
        out = {
            "dp_steps": float(plan.steps),
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
        }
        if fresh_from is not None:
            ledger = budget.note(
                ledger,
                "fresh-model",
                f"run {run_id} round {round_}: the model of round {fresh_from} was trained without DP; "
                "DP training starts from a fresh model",
            )
            out["dp_fresh_model"] = 1.0
        if plan.steps == 0:
            return out, plan
        charged = budget.commit(ledger, plan, run_id, round_)  # before the first step
        history = run_private_round(
            model,
            data.train,
            data.train_groups,
            plan,
            data.spec.privacy,
            settings.lr,
            settings.weight_decay,
            ledger.history,
            lambda batch: private_losses(
                model,
                batch,
                negatives,
                negative_labels,
                data.by_class,
                data.config.train.task_temperature,
                device,
            ),
            public_term,
        )
        if [list(h) for h in history] != charged.history:
            raise LedgerError(
                f"the accountant recorded {history}, not the charged {charged.history}; nothing is sent"
            )
        return out, plan
