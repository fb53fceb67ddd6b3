"""How much of a teacher's knowledge can reach the server through the public set at all?

Representation exchange moves knowledge only through the teachers' outputs on the public set.
This benchmark bounds that channel on the all-paired openclipart federation
(``specs/openclipart-paired.toml``: its partition, its six sites' architectures, its server),
outside the protocol, with frozen features and heads trained directly:

* teachers, each ensembled by score fusion :math:`S = \\frac1K\\sum_k Z_k^{img} (Z_k^{txt})^T`:

  - ``public``: the six sites' architectures trained on the public pairs alone (what the
    coordinator can build without any site);
  - ``sites``: the same architectures trained on the public pairs *and* each site's own
    private pairs (the best a site can know);
  - ``oracle``: one model of the server's architecture trained on the public pairs and every
    site's private pairs (the centralized model: it knows everything the sites know);

* students (the server's architecture, ``epochs`` passes over the public pairs, task loss
  :math:`L_{task}` = symmetric InfoNCE) distilled from each teacher with relational KD on each
  batch :math:`B`:

  .. math::

      L = L_{task} + \\frac{w}{2}\\big[\\mathrm{CE}(\\mathrm{softmax}(S_B/\\tau),
      \\mathrm{softmax}(s_B/\\tau)) + \\text{the same over columns}\\big]

  where :math:`s_B` is the student's image-text similarity on the batch; the batch is either the
  public pairs themselves (``plain``) or mixed public items (``mixup``: row i of the batch is
  :math:`\\lambda x_i + (1-\\lambda) x_j` for every dense featurizer, a random token mix for token
  ids, image and text with independent :math:`\\lambda \\sim U(0,1)`), which the teachers have not
  memorised. Mixed public items cost no privacy: they are built from the public set.

A third transfer, ``regress``, matches representations instead of similarities: the teachers'
ensemble *is* one embedding space, because score fusion is a dot product of concatenations,
:math:`S = \\frac1K [z^{img}_1, \\dots, z^{img}_K] [z^{txt}_1, \\dots, z^{txt}_K]^T`. The student
regresses onto that concatenation through one linear map :math:`A` (shared by both modalities,
so it cannot undo the image-text alignment; dropped after training), on mixed public items,
without the task loss:

.. math::

    L = w \\sum_{m \\in \\{img, txt\\}} \\Big(1 - \\cos\\big(A\\, s^m(x),\\,
    [\\hat z^m_1(x), \\dots, \\hat z^m_K(x)]\\big)\\Big)

with :math:`\\hat z` each teacher's unit-norm embedding. The weight and passes
(``--regress-weight``, ``--regress-epochs``) were chosen on val rsum.

If the oracle's student is no better than the public teachers' student, no method that learns
from teachers' outputs on this public set can make the sites' private pairs reach the server.

    python benchmarks/quality/transfer_bound.py --seeds 0,1,2

The students are trained for the protocol's budget by default (100 passes: 10 rounds of 15,000
mixed items); ``results/transfer_bound-300.*`` is the bound at 300 passes, chosen on val
(``results/transfer_bound-passes.md``, with the commands: seeds run side by side, then
``--merge``d into one table).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from mmfl.config import FederationSpec, load_config
from mmfl.data.builtin import open_dataset
from mmfl.data.features import Featurizer
from mmfl.data.manifest import Sample
from mmfl.data.tensors import load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.models.losses import paired_contrastive
from mmfl.models.metrics import retrieval_metrics
from mmfl.models.multimodal import MultiEncoder
from mmfl.paths import feature_cache_root
from mmfl.simulation.paired import paired_difference, sample_std
from mmfl.simulation.plan import partition_sites

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
SPEC = HERE / "specs" / "openclipart-paired.toml"
RESULTS = HERE / "results"
PAIR = ("image", "text")
Features = dict[str, torch.Tensor]  # featurizer key -> inputs of the paired rows


class Setup:
    """The spec's data for one seed: featurized public, val, test and private pairs.

    ``overrides`` are spec overrides (``data_dir=...`` for a re-split copy); ``sites`` keeps the
    spec's first ``sites`` sites, as :mod:`scaling` does for its federations."""

    def __init__(self, seed: int, overrides: Sequence[str] = (), sites: int | None = None) -> None:
        spec = load_config(FederationSpec, SPEC, [*overrides, f"seed={seed}"])
        self.spec = spec.model_copy(update={"sites": spec.sites[:sites]}) if sites else spec
        self.seed = seed
        ds = open_dataset(self.spec.data_dir or self.spec.dataset)
        self.info = ds.info
        self.server_arch = dict(self.spec.server.architectures)
        self.site_archs = [dict(s.architectures) for s in self.spec.sites]
        self.featurizers: dict[str, Featurizer] = {}
        for arch in [*self.site_archs, self.server_arch]:
            for f in featurizers_for(arch, self.info.image_size, self.info.image_channels).values():
                self.featurizers[f.key] = f
        self.public = self._load(ds.manifest("public").samples)
        self.val = self._load(ds.manifest("val").samples)
        self.test = self._load(ds.manifest("test").samples)
        self.private = [self._load(p) for p in partition_sites(self.spec, ds)]

    def _load(self, samples: list[Sample]) -> Features:
        paired = [s for s in samples if set(PAIR) <= set(s.values)]
        out: Features = {}
        for key, f in self.featurizers.items():
            one = [Sample(s.id, {f.modality: s.values[f.modality]}, s.label, s.group) for s in paired]
            out[key] = load_tensors(one, {f.modality: f}, [], feature_cache_root(), progress=False).inputs[
                f.modality
            ]
        return out

    def inputs(self, x: Features, arch: Mapping[str, str]) -> dict[str, torch.Tensor]:
        fz = featurizers_for(arch, self.info.image_size, self.info.image_channels)
        return {m: x[fz[m].key] for m in arch}

    def model(self, arch: Mapping[str, str], seed: int) -> MultiEncoder:
        fz = featurizers_for(arch, self.info.image_size, self.info.image_channels)
        shapes = {m: tuple(self.public[fz[m].key].shape[1:]) for m in arch}
        return MultiEncoder(arch, shapes, self.spec.embed_dim, 0, seed)


def rows(x: Features) -> int:
    return len(next(iter(x.values())))


def joined(a: Features, b: Features) -> Features:
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def similarity(setup: Setup, model: MultiEncoder, x: Features) -> torch.Tensor:
    inp = setup.inputs(x, model.architectures)
    return model.encode("image", inp["image"]) @ model.encode("text", inp["text"]).T


def rsum(sim: torch.Tensor) -> float:
    """Image<->text R@1+5+10 both ways of a score matrix whose diagonal holds the pairs."""
    labels = torch.zeros(len(sim), dtype=torch.long)
    return float(retrieval_metrics(sim, torch.eye(len(sim)), labels, False, PAIR)["rsum"])


def train_contrastive(
    setup: Setup, model: MultiEncoder, x: Features, epochs: int, lr: float, batch: int, seed: int
) -> MultiEncoder:
    """``epochs`` passes of symmetric InfoNCE (temperature 0.07) over the pairs ``x``; frozen after."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    inp = setup.inputs(x, model.architectures)
    model.train()
    for _ in range(epochs):
        for b in np.array_split(rng.permutation(rows(x)), max(1, rows(x) // batch)):
            idx = torch.as_tensor(b)
            loss = paired_contrastive(
                model("image", inp["image"][idx]),
                model("text", inp["text"][idx]),
                torch.eye(len(b), dtype=torch.bool),
                0.07,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def mixed(setup: Setup, x: Features, i: torch.Tensor, j: torch.Tensor, rng: np.random.Generator) -> Features:
    """Mixed public items: ``lam x_i + (1 - lam) x_j`` per dense featurizer (token ids: each slot
    from i with probability lam); image and text draw their own lam ~ U(0, 1)."""
    lam = {m: torch.as_tensor(rng.uniform(0, 1, len(i)), dtype=torch.float32) for m in PAIR}
    out: Features = {}
    for key, v in x.items():
        w = lam[setup.featurizers[key].modality]
        if v.dtype in (torch.int64, torch.int32):
            out[key] = torch.where(torch.rand(v[i].shape) < w.view(-1, 1), v[i], v[j])
        else:
            shape = (-1,) + (1,) * (v.dim() - 1)
            out[key] = w.view(shape) * v[i] + (1 - w.view(shape)) * v[j]
    return out


@torch.no_grad()
def concatenated(setup: Setup, teachers: list[MultiEncoder], batch: Features, modality: str) -> torch.Tensor:
    """``[z_1, ..., z_K] / sqrt(K)``: the teachers' unit-norm embeddings side by side (unit norm)."""
    z = []
    for t in teachers:
        z.append(F.normalize(t.encode(modality, setup.inputs(batch, t.architectures)[modality]), dim=-1))
    return torch.cat(z, 1) / len(teachers) ** 0.5


def train_regression_student(
    setup: Setup, teachers: list[MultiEncoder], epochs: int, weight: float
) -> list[tuple[float, float]]:
    """The ``regress`` transfer of the module docstring; (val, test) rsum after each epoch."""
    seed = setup.seed
    rng = np.random.default_rng(seed)
    model = setup.model(setup.server_arch, seed)
    dim = setup.spec.embed_dim
    adapter = torch.nn.Linear(dim, dim * len(teachers), bias=False)
    opt = torch.optim.Adam([*model.parameters(), *adapter.parameters()], lr=setup.spec.server.lr)
    x = setup.public
    history: list[tuple[float, float]] = []
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(rows(x)), max(1, rows(x) // setup.spec.server.batch_size)):
            idx = torch.as_tensor(b)
            batch = mixed(setup, x, idx, torch.as_tensor(rng.integers(0, rows(x), len(b))), rng)
            own = setup.inputs(batch, setup.server_arch)
            loss = torch.zeros(())
            for m in PAIR:
                target = concatenated(setup, teachers, batch, m)
                guess = F.normalize(adapter(model(m, own[m])), dim=-1)
                loss = loss + weight * (1 - (guess * target).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        history.append(
            (rsum(similarity(setup, model, setup.val)), rsum(similarity(setup, model, setup.test)))
        )
    return history


def summarise_history(history: list[tuple[float, float]]) -> dict[str, float]:
    """Test rsum at the last epoch and at the epoch of best val rsum."""
    best = max(range(len(history)), key=lambda e: history[e][0])
    return {
        "test": history[-1][1],
        "val": history[-1][0],
        "test_at_best_val": history[best][1],
        "best_epoch": best + 1,
    }


def train_student(
    setup: Setup, teachers: list[MultiEncoder], transfer: str, epochs: int, weight: float, tau: float
) -> dict[str, float]:
    """The server trained on the public pairs (+ relational KD from ``teachers`` on ``transfer``
    batches); test rsum at the last epoch and at the epoch of best val rsum."""
    seed = setup.seed
    rng = np.random.default_rng(seed)
    model = setup.model(setup.server_arch, seed)
    opt = torch.optim.Adam(model.parameters(), lr=setup.spec.server.lr)
    x = setup.public
    inp = setup.inputs(x, setup.server_arch)
    history: list[tuple[float, float]] = []
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(rows(x)), max(1, rows(x) // setup.spec.server.batch_size)):
            idx = torch.as_tensor(b)
            loss = paired_contrastive(
                model("image", inp["image"][idx]),
                model("text", inp["text"][idx]),
                torch.eye(len(b), dtype=torch.bool),
                setup.spec.server.temperature,
            )
            if teachers:
                if transfer == "mixup":
                    batch = mixed(setup, x, idx, torch.as_tensor(rng.integers(0, rows(x), len(b))), rng)
                else:
                    batch = {k: v[idx] for k, v in x.items()}
                with torch.no_grad():
                    target = sum(similarity(setup, t, batch) for t in teachers) / len(teachers)
                own = setup.inputs(batch, setup.server_arch)
                s = model("image", own["image"]) @ model("text", own["text"]).T
                kd = -(F.softmax(target / tau, 1) * F.log_softmax(s / tau, 1)).sum(1).mean()
                kd = kd - (F.softmax(target.T / tau, 1) * F.log_softmax(s.T / tau, 1)).sum(1).mean()
                loss = loss + weight * 0.5 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append(
            (rsum(similarity(setup, model, setup.val)), rsum(similarity(setup, model, setup.test)))
        )
    return summarise_history(history)


def public_teachers(setup: Setup, epochs: int) -> list[MultiEncoder]:
    """The sites' architectures trained by the coordinator on the public pairs alone, frozen."""
    s = setup.seed
    return [
        train_contrastive(setup, setup.model(a, 100 * s + k), setup.public, epochs, 1e-3, 64, 100 * s + k)
        for k, a in enumerate(setup.site_archs)
    ]


def offline_control(setup: Setup, teacher_epochs: int, epochs: int, weight: float) -> dict[str, Any]:
    """The strongest site-free server known: the ``regress`` student of the public teachers."""
    history = train_regression_student(setup, public_teachers(setup, teacher_epochs), epochs, weight)
    return {**summarise_history(history), "history": history}


def site_teachers(setup: Setup, epochs: int) -> list[MultiEncoder]:
    """The sites' architectures, each trained on the public pairs and its site's private pairs."""
    s = setup.seed
    return [
        train_contrastive(
            setup,
            setup.model(a, 100 * s + k),
            joined(setup.public, setup.private[k]),
            epochs,
            1e-3,
            64,
            100 * s + k,
        )
        for k, a in enumerate(setup.site_archs)
    ]


def teacher_sets(setup: Setup, epochs: int) -> dict[str, list[MultiEncoder]]:
    """The three teacher sets of the module docstring, each frozen."""
    s = setup.seed
    public = public_teachers(setup, epochs)
    sites = site_teachers(setup, epochs)
    everything = setup.public
    for part in setup.private:
        everything = joined(everything, part)
    oracle = train_contrastive(
        setup, setup.model(setup.server_arch, 7 + s), everything, epochs, setup.spec.server.lr, 128, 7 + s
    )
    return {"public": public, "sites": sites, "oracle": [oracle]}


def run_seed(seed: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    started = time.time()
    setup = Setup(seed)
    teachers = teacher_sets(setup, args.teacher_epochs)
    out: dict[str, Any] = {"teachers": {}, "students": {}}
    for name, models in teachers.items():
        fused = lambda x, ms=models: sum(similarity(setup, m, x) for m in ms)  # noqa: E731
        out["teachers"][name] = {"val": rsum(fused(setup.val)), "test": rsum(fused(setup.test))}
    out["students"]["server-only"] = train_student(setup, [], "plain", args.epochs, 0.0, args.tau)
    for name, models in teachers.items():
        for transfer in args.transfers:
            key = f"{name}/{transfer}"
            if transfer == "regress":
                history = train_regression_student(setup, models, args.regress_epochs, args.regress_weight)
                out["students"][key] = summarise_history(history)
                out["students"][key]["history"] = history
            else:
                out["students"][key] = train_student(
                    setup, models, transfer, args.epochs, args.weight, args.tau
                )
            console.print(f"seed {seed} {key}: {out['students'][key]} ({time.time() - started:.0f} s)")
    out["seconds"] = time.time() - started
    return out


def table(results: dict[int, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown: teachers and students (mean ± sample std over the seeds that ran each), and
    paired differences against the public teachers' student of the same transfer, with the
    share of the gap between that student and the oracle teacher (the centralized model)."""
    seeds = sorted(results)

    def stat(values: list[float]) -> str:
        sd = sample_std(values)
        return f"{np.mean(values):.1f}" + (f" ± {sd:.1f}" if sd is not None else "")

    def ran(key: str) -> list[int]:
        return [s for s in seeds if key in results[s]["students"]]

    students = list(dict.fromkeys(k for s in seeds for k in results[s]["students"]))
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; test rsum (image↔text R@1+5+10 both ways), mean ± sample std.",
        "",
    ]
    lines += ["| teachers (score-fusion ensemble) | val rsum | test rsum |", "|---|---|---|"]
    for name in results[seeds[0]]["teachers"]:
        v = [results[s]["teachers"][name]["val"] for s in seeds]
        t = [results[s]["teachers"][name]["test"] for s in seeds]
        lines.append(f"| {name} | {stat(v)} | {stat(t)} |")
    lines += [
        "",
        "| student (server) | seeds | test, last epoch | test at best-val epoch | val, last epoch |",
        "|---|---|---|---|---|",
    ]
    for key in students:
        got = [results[s]["students"][key] for s in ran(key)]
        lines.append(
            f"| {key} | {len(got)} | {stat([g['test'] for g in got])} | "
            f"{stat([g['test_at_best_val'] for g in got])} | {stat([g['val'] for g in got])} |"
        )
    diffs: dict[str, Any] = {}
    lines += [
        "",
        "| student − public teachers' student (same transfer) | mean | 95 % interval | per seed "
        "| share of the gap to the oracle teacher |",
        "|---|---|---|---|---|",
    ]
    for key in students:
        name, _, transfer = key.partition("/")
        base = f"public/{transfer}"
        if name == "public" or not transfer or base not in students:
            continue
        both = [s for s in ran(key) if s in ran(base)]
        d = paired_difference(
            key,
            base,
            {s: results[s]["students"][key]["test"] for s in both},
            {s: results[s]["students"][base]["test"] for s in both},
        )
        gap = np.mean(
            [results[s]["teachers"]["oracle"]["test"] - results[s]["students"][base]["test"] for s in both]
        )
        diffs[key] = d.model_dump() | {"gap_share": float(d.mean / gap)}
        ci = "—" if d.ci_low is None else f"[{d.ci_low:+.1f}, {d.ci_high:+.1f}]"
        lines.append(
            f"| {key} | {d.mean:+.1f} | {ci} | {', '.join(f'{v:+.1f}' for v in d.per_seed)} "
            f"| {100 * d.mean / gap:.0f} % |"
        )
    return "\n".join(lines) + "\n", diffs


def merged_results(path: Path, settings: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """The per-seed results of an earlier run's JSON; refused unless it ran with ``settings``
    (every option but the seeds, the threads and the output)."""
    try:
        record = json.loads(path.read_text())
        theirs, results = dict(record["settings"]), dict(record["results"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--merge {path}: not a transfer_bound result file ({exc})") from None
    differ = sorted(k for k in settings if theirs.get(k) != settings[k])
    if differ:
        raise SystemExit(f"--merge {path}: ran with other settings ({', '.join(differ)}); rerun or drop it")
    return {int(k): v for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30, help="student passes over the public pairs")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--weight", type=float, default=3.0, help="KD weight w")
    parser.add_argument("--tau", type=float, default=0.05, help="KD temperature")
    parser.add_argument("--transfers", default="mixup,regress", help="plain, mixup, regress; comma-separated")
    parser.add_argument("--regress-epochs", type=int, default=100, help="student passes, regress transfer")
    parser.add_argument("--regress-weight", type=float, default=10.0, help="w of the regress transfer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "transfer_bound")
    parser.add_argument(
        "--merge",
        nargs="*",
        type=Path,
        default=[],
        help="result files (--out's .json) of runs of other seeds, run side by side, to merge in",
    )
    args = parser.parse_args()
    args.transfers = args.transfers.split(",")
    torch.set_num_threads(args.threads)
    console = Console()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "merge", "seeds", "threads")}
    results: dict[int, dict[str, Any]] = {}
    for path in args.merge:
        results.update(merged_results(path, settings))
    partial = args.out.with_suffix(".partial.json")
    if partial.exists():
        results.update({int(k): v for k, v in json.loads(partial.read_text()).items()})
    for seed in (int(s) for s in args.seeds.split(",") if s):
        if seed not in results:
            results[seed] = run_seed(seed, args, console)
            partial.write_text(json.dumps(results, indent=1))
    if not results:
        parser.error("no seed to run or merge")
    md, diffs = table(results)
    settings["seeds"] = sorted(results)
    args.out.with_suffix(".json").write_text(
        json.dumps({"settings": settings, "results": results, "differences": diffs}, indent=1)
    )
    args.out.with_suffix(".md").write_text(md)
    partial.unlink(missing_ok=True)
    console.print(md)


if __name__ == "__main__":
    main()
