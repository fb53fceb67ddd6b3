"""Membership-inference audit of a site: attack AUC with and without DP, next to epsilon.

A site model (image-only MLP, the digits default) trains on ``--members`` private digits for
``--epochs`` epochs, the way a site trains its task (class head, Adam): without DP, and with
DP-SGD at each ``--epsilons`` budget (noise derived for that many epochs). The attacks
(``benchmarks/privacy/membership.py``) then separate the members from as many held-out non-members.
Prints a table and writes ``benchmarks/results/privacy_audit.json``.

    python benchmarks/privacy/privacy_audit.py [--members 256] [--epochs 40] [--epsilons 1,8] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
from membership import membership_auc  # noqa: E402
from rich.console import Console
from rich.table import Table

from mmfl.client.privacy.budget import RoundPlan, plan_noise
from mmfl.client.privacy.dp_sgd import private_losses, run_private_round
from mmfl.client.privacy.ledger import epsilon_of
from mmfl.config import PrivacyConfig
from mmfl.data.builtin import open_dataset
from mmfl.data.tensors import load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.paths import feature_cache_root

ARCH = {"image": "mlp"}


def train(members, epsilon: float | None, epochs: int, batch: int, seed: int) -> tuple[MultiEncoder, float]:
    model = MultiEncoder(ARCH, {"image": tuple(members.inputs["image"].shape[1:])}, 256, 10, seed=seed)
    device = torch.device("cpu")
    rng = np.random.default_rng(seed)
    no_globals: dict = {}
    if epsilon is None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(epochs):
            for b in batches(len(members), batch, rng):
                opt.zero_grad()
                private_losses(
                    model, members.subset(b), no_globals, no_globals, False, 0.1, device
                ).mean().backward()
                opt.step()
        return model, float("inf")
    config = PrivacyConfig(enabled=True, target_epsilon=epsilon, planned_rounds=1, max_grad_norm=1.0)
    q = min(1.0, batch / len(members))
    steps = epochs * max(1, round(1.0 / q))
    sigma = plan_noise([], 0.0, epsilon, q, steps, config.delta, config.accountant)
    history = run_private_round(
        model,
        members,
        None,
        RoundPlan(sigma, q, steps, len(members), epsilon),
        config,
        1e-3,
        0.0,
        [],
        lambda x: private_losses(model, x, no_globals, no_globals, False, 0.1, device),
        None,
    )
    return model, epsilon_of(history, config.delta, config.accountant)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epsilons", default="1,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "privacy_audit.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = open_dataset("digits")
    feats = featurizers_for(ARCH, ds.info.image_size, ds.info.image_channels)
    pool = load_tensors(ds.manifest("private").samples, feats, ds.info.classes, feature_cache_root())
    budgets: list[float | None] = [None, *[float(e) for e in args.epsilons.split(",") if e]]
    results = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        order = np.random.default_rng(100 + seed).permutation(len(pool))
        members, nonmembers = (
            pool.subset(order[: args.members]),
            pool.subset(order[args.members : 2 * args.members]),
        )
        for eps in budgets:
            model, spent = train(members, eps, args.epochs, args.batch, seed)
            aucs = membership_auc(model, members, nonmembers, "image")
            with torch.no_grad():
                acc = float(
                    (
                        model.heads["image"](model.encode("image", nonmembers.inputs["image"])).argmax(1)
                        == nonmembers.labels
                    )
                    .float()
                    .mean()
                )
            results.append(
                {
                    "seed": seed,
                    "target_epsilon": eps,
                    "epsilon_spent": spent,
                    **{f"auc_{k}": v for k, v in aucs.items()},
                    "heldout_accuracy": 100 * acc,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    summary = []
    for eps in budgets:
        rows = [r for r in results if r["target_epsilon"] == eps]
        summary.append(
            {
                "target_epsilon": eps,
                "epsilon_spent": float(np.mean([r["epsilon_spent"] for r in rows])),
                **{
                    k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
                    for k in ("auc_loss", "auc_representation", "heldout_accuracy")
                },
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"members": args.members, "epochs": args.epochs, "runs": results, "summary": summary}, indent=2
        )
    )
    table = Table(
        title=f"membership inference on a digits image site ({args.members} members, {args.epochs} epochs)"
    )
    for col in ("training", "epsilon", "AUC loss attack", "AUC representation attack", "held-out accuracy %"):
        table.add_column(col, justify="right")
    for s in summary:
        fmt = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
        table.add_row(
            "no DP" if s["target_epsilon"] is None else f"DP ε≤{s['target_epsilon']:g}",
            "∞" if s["target_epsilon"] is None else f"{s['epsilon_spent']:.2f}",
            fmt(s["auc_loss"]),
            fmt(s["auc_representation"]),
            f"{s['heldout_accuracy'][0]:.1f} ± {s['heldout_accuracy'][1]:.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
