"""Scaling study: where representation exchange can pay and where it cannot.

On the all-paired openclipart federation (``specs/openclipart-paired.toml``) it varies

* the public-set size (500 / 1,500 / 3,000 of the 3,446 training pairs; the rest is private),
* the number of paired sites (2 / 4 / 6: the spec's first k sites share the same private pool,
  so fewer sites hold more rows each),

and runs the federated method, its site-free controls and ``centralized`` (the ceiling) on the
same seeds. The table gives each federation - strongest control (by val) as a paired per-seed
difference with its 95 % t interval, and the share of the control-to-ceiling gap closed; the
plot shows the four servers against the public-set size and the number of sites.

    python benchmarks/scaling.py                  # the whole grid, seeds 0-2
    python benchmarks/scaling.py --seeds 0 --rounds 4 --reuse

The committed ``results/scaling.*`` came from (the 1,500-public, 6-site runs are those of
``quality.py --datasets openclipart-paired``, the same spec and seeds):

    python benchmarks/scaling.py --reuse --grid 500:6 --seeds 0,1,2
    python benchmarks/scaling.py --reuse --grid 1500:2 --seeds 0,1,2,3,4
    python benchmarks/scaling.py --reuse --grid 3000:6 --seeds 0,1 --controls site-free
    python benchmarks/scaling.py --reuse --grid 1500:4 --seeds 0,1,2
    python benchmarks/scaling.py --existing --grid 500:6,1500:6,3000:6,1500:4,1500:2 --seeds 0,1,2,3,4

(the 1,500:4 runs came one change later than the others: Adam's fused kernel, which moves a
run's last digits.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mmfl.config import FederationSpec, load_config
from mmfl.data.builtin import open_dataset
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.paired import gap_closed, paired_difference
from mmfl.simulation.plan import build_plan

HERE = Path(__file__).resolve().parent
SPEC = HERE / "specs" / "openclipart-paired.toml"
GRID = [(1500, 6), (500, 6), (1500, 2), (3000, 6), (1500, 4)]
BUILTIN_PUBLIC = 1500  # the prepared data set's own split: used as it is, not re-split
FEDERATION = "cream+"
CONTROLS = ["site-free", "public-teachers"]
CEILING = "centralized"


def resplit(folder: Path, public: int, seed: int = 0) -> Path:
    """A prepared copy of openclipart whose public set holds ``public`` of the training pairs
    (public and private pooled, shuffled once with ``seed``); val and test are unchanged."""
    source = open_dataset("openclipart").root
    if (folder / "dataset.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    info = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    pool = [
        line
        for split in ("public", "private")
        for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if not 0 < public < len(pool):
        raise ValueError(f"public size {public} must lie between 1 and {len(pool) - 1}")
    pool = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    parts = {"public": pool[:public], "private": pool[public:]}
    for split in ("val", "test"):
        shutil.copyfile(source / f"{split}.jsonl", folder / f"{split}.jsonl")
    for split, rows in parts.items():
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        info["splits"][split] = len(rows)
    info["notes"] = [*info.get("notes", []), f"scaling study: public and private re-split, {public} public"]
    (folder / "dataset.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return folder


def run_dir(out: Path, public: int, sites: int, strategy: str, seed: int) -> Path:
    return out / f"public-{public}-sites-{sites}" / f"{strategy.replace('+', 'plus')}-s{seed}"


def run_setting(
    public: int, sites: int, strategy: str, seed: int, out: Path, rounds: int | None, reuse: bool
) -> dict[str, Any]:
    overrides = [f'strategy="{strategy}"', f"seed={seed}"]
    if public != BUILTIN_PUBLIC:
        overrides.append(f'data_dir="{resplit(out / "data" / f"public-{public}", public)}"')
    if rounds is not None:
        overrides.append(f"rounds={rounds}")
    spec = load_config(FederationSpec, SPEC, overrides)
    spec = spec.model_copy(update={"sites": spec.sites[:sites]})
    folder = run_dir(out, public, sites, strategy, seed)
    done = folder / "summary.json"
    if reuse and done.exists() and load_config(FederationSpec, folder / "spec.toml") == spec:
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_inprocess(build_plan(spec, folder, force=True))
    print(
        f"public {public}, {sites} sites, {strategy}, seed {seed}: "
        f"test rsum {summary['final']['retrieval']['rsum']:.1f}, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return summary


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (axis, fixed, label) in zip(
        axes,
        (("public", ("sites", 6), "public-set size"), ("sites", ("public", 1500), "paired sites")),
        strict=True,
    ):
        chosen = sorted((r for r in rows if r[fixed[0]] == fixed[1]), key=lambda r: r[axis])
        for name in [FEDERATION, *CONTROLS, CEILING]:
            have = [r for r in chosen if name in r["test"]]
            ax.errorbar(
                [r[axis] for r in have],
                [r["test"][name]["mean"] for r in have],
                yerr=[r["test"][name]["std"] or 0 for r in have],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xlabel(label)
        ax.set_ylabel("server test rsum")
        ax.set_title(f"{label} ({fixed[0]} = {fixed[1]})")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=None, help="override the spec's rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument(
        "--controls",
        default=",".join(CONTROLS),
        help="site-free controls to run (public-teachers trains every site on the public set: slow)",
    )
    parser.add_argument(
        "--existing",
        action="store_true",
        help="tables from the runs already in --out only (each point over the seeds it has)",
    )
    parser.add_argument(
        "--grid", default=None, help="public:sites points, e.g. 500:6,1500:2 (default: the whole grid)"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    controls = [c for c in args.controls.split(",") if c]
    work = args.out / "runs" / "scaling"
    rows = []
    grid = GRID if not args.grid else [tuple(int(x) for x in p.split(":")) for p in args.grid.split(",")]
    for public, sites in grid:
        by: dict[str, dict[int, dict[str, float]]] = {}
        for strategy in [FEDERATION, *controls, CEILING]:
            by[strategy] = {}
            for seed in seeds:
                if (
                    args.existing
                    and not run_dir(work, public, sites, strategy, seed).joinpath("summary.json").exists()
                ):
                    continue
                reuse = args.reuse or args.existing  # --existing never recomputes a run
                final = run_setting(public, sites, strategy, seed, work, args.rounds, reuse)["final"]
                by[strategy][seed] = {
                    "test": final["retrieval"]["rsum"],
                    "val": final["val_retrieval"]["rsum"],
                }
        test = {k: {s: v["test"] for s, v in d.items()} for k, d in by.items() if d}
        ran = [c for c in controls if by[c]]
        val_mean = {c: float(np.mean([v["val"] for v in by[c].values()])) for c in ran}
        strongest = max(ran, key=val_mean.__getitem__)
        diff = paired_difference(FEDERATION, strongest, test[FEDERATION], test[strongest])
        means = {k: float(np.mean(list(v.values()))) for k, v in test.items()}
        rows.append(
            {
                "public": public,
                "sites": sites,
                "test": {
                    k: {
                        "mean": means[k],
                        "std": float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else None,
                    }
                    for k, v in test.items()
                },
                "strongest_control": strongest,
                "difference": diff.model_dump(),
                "gap_closed": gap_closed(means[FEDERATION], means[strongest], means[CEILING]),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(
        json.dumps({"seeds": seeds, "rounds": args.rounds, "rows": rows}, indent=2)
    )
    plot(rows, args.out / "scaling.png")
    table = Table(title=f"scaling: server test rsum, mean over seeds {seeds}")
    for col in ("public", "sites", FEDERATION, *CONTROLS, CEILING, "fed − strongest [95 %]", "gap closed"):
        table.add_column(col, justify="right")
    lines = [
        f"| public | paired sites | {FEDERATION} | {' | '.join(CONTROLS)} | {CEILING} | "
        "federation − strongest control [95 %] | gap closed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["difference"]
        ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
        closed = "—" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f} %"
        cells = [
            f"{r['test'][k]['mean']:.1f}" + (f" ± {r['test'][k]['std']:.1f}" if r["test"][k]["std"] else "")
            if k in r["test"]
            else "not run"
            for k in (FEDERATION, *CONTROLS, CEILING)
        ]
        table.add_row(
            str(r["public"]),
            str(r["sites"]),
            *cells,
            f"{d['mean']:+.1f}{ci} ({r['strongest_control']})",
            closed,
        )
        lines.append(
            f"| {r['public']} | {r['sites']} | " + " | ".join(cells) + f" | {d['mean']:+.1f}{ci} "
            f"({r['strongest_control']}) | {closed} |"
        )
    (args.out / "scaling.md").write_text("\n".join([*lines, "", "![scaling](scaling.png)", ""]))
    Console().print(table)


if __name__ == "__main__":
    main()
