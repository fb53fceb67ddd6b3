"""Probe (issue 11): does a server that sees the sites' featurizers keep more of their knowledge?

The transfer bound (``transfer_bound.py``) found the loss between the six sites' teachers
(ensemble test rsum 130.8) and their regression student (116.2) to lie in the spaces of the
teachers built on raw pixels (``cnn-small``, ``mlp``) and hashed tokens (``bag``) and GloVe: the
server (EfficientNet and MiniLM features only) follows them worst, yet dropping them lowers val.
Every featurizer is public, so the coordinator may feed all of them to its own model.

The *wide* student adds, per modality, one branch per featurizer the sites use and the server
does not, each the sites' own architecture for it, and sums the branches' outputs before the
unit normalisation:

.. math::

    s^m(x) = \\mathrm{normalize}\\Big(\\sum_{f \\in F_m} g_f(x_f)\\Big)

(image: EfficientNet MLP + ``cnn-small`` on pixels; text: MiniLM MLP + GloVe MLP + ``bag``).
Both students, narrow (the spec's server) and wide, are distilled by the ``regress`` transfer of
``transfer_bound.py`` from the public teachers and from the sites' teachers, and the oracle (the
centralized model) is trained in both shapes, so the gap is measured against each student's own
ceiling. Val rsum only: this is a selection probe; test is written but not read to choose.

    python benchmarks/probes/wide_server_probe.py --seed 0 --passes 300 --out /tmp/wide/s0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from mmfl.models.encoders import architecture, featurizers_for
from mmfl.models.losses import paired_contrastive

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))  # the offline bound's helpers
from transfer_bound import (  # noqa: E402
    PAIR,
    Features,
    Setup,
    concatenated,
    joined,
    mixed,
    public_teachers,
    rows,
    rsum,
    site_teachers,
)

# The sites' architecture per featurizer the server lacks (one branch each).
EXTRA_BRANCHES = {"image": ("cnn-small",), "text": ("glove-mlp", "bag")}


class WideStudent(nn.Module):
    """Per modality, the sum of one encoder body per featurizer, then unit normalisation."""

    def __init__(self, setup: Setup, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        info = setup.info
        self.keys: dict[str, list[str]] = {}
        self.branches = nn.ModuleDict()
        for m in PAIR:
            names = (setup.server_arch[m], *EXTRA_BRANCHES[m])
            self.keys[m] = []
            bodies = nn.ModuleList()
            for name in names:
                key = featurizers_for({m: name}, info.image_size, info.image_channels)[m].key
                shape = tuple(setup.public[key].shape[1:])
                bodies.append(architecture(name, m).build(shape, setup.spec.embed_dim))
                self.keys[m].append(key)
            self.branches[m] = bodies

    def forward(self, modality: str, x: Features) -> torch.Tensor:
        out = sum(b(x[k]) for b, k in zip(self.branches[modality], self.keys[modality], strict=True))
        return F.normalize(out, dim=-1)

    @torch.no_grad()
    def encode(self, modality: str, x: Features) -> torch.Tensor:
        self.eval()
        n = rows(x)
        return torch.cat(
            [self(modality, {k: v[i : i + 512] for k, v in x.items()}) for i in range(0, n, 512)]
        )


class NarrowStudent(nn.Module):
    """The spec's server model behind the same interface (inputs: every featurizer's tensor)."""

    def __init__(self, setup: Setup, seed: int) -> None:
        super().__init__()
        self.model = setup.model(setup.server_arch, seed)
        self.setup = setup

    def forward(self, modality: str, x: Features) -> torch.Tensor:
        return self.model(modality, self.setup.inputs(x, self.model.architectures)[modality])

    @torch.no_grad()
    def encode(self, modality: str, x: Features) -> torch.Tensor:
        return self.model.encode(modality, self.setup.inputs(x, self.model.architectures)[modality])


def student(setup: Setup, shape: str, seed: int) -> nn.Module:
    return WideStudent(setup, seed) if shape == "wide" else NarrowStudent(setup, seed)


def val_rsum(model: nn.Module, x: Features) -> float:
    return rsum(model.encode("image", x) @ model.encode("text", x).T)


def regress(
    setup: Setup, shape: str, teachers: list, passes: int, weight: float, every: int = 10
) -> list[tuple[float, float]]:
    """``transfer_bound.train_regression_student`` with either student; (val, test) every
    ``every`` passes and after the last (NaN between)."""
    rng = np.random.default_rng(setup.seed)
    model = student(setup, shape, setup.seed)
    dim = setup.spec.embed_dim
    adapter = torch.nn.Linear(dim, dim * len(teachers), bias=False)
    opt = torch.optim.Adam([*model.parameters(), *adapter.parameters()], lr=setup.spec.server.lr)
    x = setup.public
    history = []
    for _ in range(passes):
        model.train()
        for b in np.array_split(rng.permutation(rows(x)), max(1, rows(x) // setup.spec.server.batch_size)):
            idx = torch.as_tensor(b)
            batch = mixed(setup, x, idx, torch.as_tensor(rng.integers(0, rows(x), len(b))), rng)
            loss = torch.zeros(())
            for m in PAIR:
                target = concatenated(setup, teachers, batch, m)
                guess = F.normalize(adapter(model(m, batch)), dim=-1)
                loss = loss + weight * (1 - (guess * target).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (len(history) + 1) % every == 0 or len(history) + 1 == passes:
            history.append((val_rsum(model, setup.val), val_rsum(model, setup.test)))
        else:
            history.append((float("nan"), float("nan")))
    return history


def centralized(setup: Setup, shape: str, epochs: int) -> tuple[float, float]:
    """The oracle of either shape: contrastive on the public and every private pair."""
    s = setup.seed
    everything = setup.public
    for part in setup.private:
        everything = joined(everything, part)
    model = student(setup, shape, 7 + s)
    rng = np.random.default_rng(7 + s)
    opt = torch.optim.Adam(model.parameters(), lr=setup.spec.server.lr)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(rows(everything)), max(1, rows(everything) // 128)):
            batch = {k: v[torch.as_tensor(b)] for k, v in everything.items()}
            loss = paired_contrastive(
                model("image", batch), model("text", batch), torch.eye(len(b), dtype=torch.bool), 0.07
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return val_rsum(model, setup.val), val_rsum(model, setup.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=300)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--weight", type=float, default=10.0)
    parser.add_argument("--teachers", default="public,sites")
    parser.add_argument("--shapes", default="narrow,wide")
    parser.add_argument("--oracle", action="store_true", help="also the centralized model of each shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    started = time.time()
    setup = Setup(args.seed)
    out: dict = {"settings": vars(args) | {"out": str(args.out)}, "students": {}, "oracle": {}}
    sets = {"public": public_teachers, "sites": site_teachers}
    for name in args.teachers.split(","):
        teachers = sets[name](setup, args.teacher_epochs)
        for shape in args.shapes.split(","):
            h = regress(setup, shape, teachers, args.passes, args.weight)
            best = max((e for e in range(len(h)) if h[e][0] == h[e][0]), key=lambda e: h[e][0])
            out["students"][f"{name}/{shape}"] = {
                "val": h[-1][0],
                "best_val": h[best][0],
                "best_pass": best + 1,
                "test": h[-1][1],
                "history": h,
            }
            console.print(
                f"seed {args.seed} {name}/{shape}: val {h[-1][0]:.1f} (best {h[best][0]:.1f} "
                f"at {best + 1}) [{time.time() - started:.0f} s]"
            )
    if args.oracle:
        for shape in args.shapes.split(","):
            v, t = centralized(setup, shape, args.teacher_epochs)
            out["oracle"][shape] = {"val": v, "test": t}
            console.print(f"seed {args.seed} oracle/{shape}: val {v:.1f} [{time.time() - started:.0f} s]")
    out["seconds"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
