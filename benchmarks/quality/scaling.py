"""Scaling study: where representation exchange can pay and where it cannot.

On the all-paired openclipart federation (``specs/openclipart-paired.toml``) it varies

* the public-set size (500 / 1,500 / 3,000 of the 3,446 training pairs; the rest is private),
* the number of paired sites (2 / 4 / 6: the spec's first k sites share the same private pool,
  so fewer sites hold more rows each),

and runs the federated method (``--federation``: ``cream+``, or ``regress``, the recommended
method), its site-free controls and ``centralized`` (the ceiling) on the same seeds. The controls
of ``cream+`` are ``site-free`` and ``public-teachers``; those of ``regress`` are ``site-free``, the
offline control (:func:`transfer_bound.offline_control`: the sites' architectures trained on the
re-split public set alone, the server regressed onto them; the strongest site-free server known)
and ``offline-6``, the same with teachers of all six of the spec's architectures whatever the
number of sites (the coordinator is free to build them; with six sites the two are one run).
``regress-public``, regress's in-protocol control, is left out: it costs as much as ``regress``
and lies 9 below the offline control on the 1,500-public, 6-site point. The table gives each
federation - strongest control (by val) as a paired per-seed difference with its 95 % t
interval, and the share of the control-to-ceiling gap closed; the plot shows the servers
against the public-set size and the number of sites.

    python benchmarks/quality/scaling.py                  # the whole grid, seeds 0-2
    python benchmarks/quality/scaling.py --seeds 0 --rounds 4 --reuse

The committed ``results/scaling.*`` came from (the 1,500-public, 6-site runs are those of
``quality.py --datasets openclipart-paired``, the same spec and seeds):

    python benchmarks/quality/scaling.py --reuse --grid 500:6 --seeds 0,1,2
    python benchmarks/quality/scaling.py --reuse --grid 1500:2 --seeds 0,1,2,3,4
    python benchmarks/quality/scaling.py --reuse --grid 3000:6 --seeds 0,1 --controls site-free
    python benchmarks/quality/scaling.py --reuse --grid 1500:4 --seeds 0,1,2
    python benchmarks/quality/scaling.py --existing --grid 500:6,1500:6,3000:6,1500:4,1500:2 --seeds 0,1,2,3,4

(the 1,500:4 runs came one change later than the others: Adam's fused kernel, which moves a
run's last digits.) The committed ``results/scaling-regress.*`` came from

    python benchmarks/quality/scaling.py --federation regress --reuse --grid 1500:2,1500:4,500:6 --seeds 0,1,2,3,4
    python benchmarks/quality/scaling.py --federation regress --reuse --grid 3000:6 --seeds 0,1,2
    python benchmarks/quality/scaling.py --federation regress --existing --grid 500:6,3000:6,1500:4,1500:2 --seeds 0,1,2,3,4

whose 1,500-public, 6-site row is read from ``quality-openclipart-paired.json`` and
``transfer_bound.json`` (the same spec, code and seeds 0-4).
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

from mmfl.config import FederationSpec, dump_toml, load_config
from mmfl.data.builtin import open_dataset
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.paired import gap_closed, paired_difference
from mmfl.simulation.plan import build_plan

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
SPEC = HERE / "specs" / "openclipart-paired.toml"
GRID = [(1500, 6), (500, 6), (1500, 2), (3000, 6), (1500, 4)]
BUILTIN_PUBLIC = 1500  # the prepared data set's own split: used as it is, not re-split
OFFLINE = "offline"
OFFLINE_ALL = "offline-6"
CONTROLS = {"cream+": ["site-free", "public-teachers"], "regress": ["site-free", OFFLINE, OFFLINE_ALL]}
CEILING = "centralized"
RESULT_NAME = {"cream+": "scaling", "regress": "scaling-regress"}


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


def spec_sites() -> int:
    return len(load_config(FederationSpec, SPEC).sites)


def as_run(strategy: str, sites: int) -> tuple[str, int]:
    """``offline-6`` is the six-site offline control's run, whatever the number of sites (the
    coordinator may train teachers of all six architectures)."""
    return (OFFLINE, spec_sites()) if strategy == OFFLINE_ALL else (strategy, sites)


def run_dir(out: Path, public: int, sites: int, strategy: str, seed: int) -> Path:
    strategy, sites = as_run(strategy, sites)
    return out / f"public-{public}-sites-{sites}" / f"{strategy.replace('+', 'plus')}-s{seed}"


def run_setting(
    public: int, sites: int, strategy: str, seed: int, out: Path, rounds: int | None, reuse: bool
) -> dict[str, Any]:
    strategy, sites = as_run(strategy, sites)
    # the offline control is no strategy of the spec: its folder records the spec it read
    overrides = [f'strategy="{"regress" if strategy == OFFLINE else strategy}"', f"seed={seed}"]
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
    if strategy == OFFLINE:
        summary = published_offline(seed) if (public, sites) == (BUILTIN_PUBLIC, spec_sites()) else None
        summary = summary or run_offline(overrides, sites, seed)
        folder.mkdir(parents=True, exist_ok=True)  # written like a run: spec.toml, summary.json
        (folder / "spec.toml").write_text(dump_toml(spec))
        (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    else:
        summary = json.loads(run_inprocess(build_plan(spec, folder, force=True)).to_json())
    print(
        f"public {public}, {sites} sites, {strategy}, seed {seed}: "
        f"test rsum {summary['final']['retrieval']['rsum']:.1f}, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return summary


def published_offline(seed: int) -> dict[str, Any] | None:
    """The offline control of the prepared split with all six architectures, as
    ``transfer_bound.py`` computed it (``public/regress``: the same function, settings and seed)."""
    import quality  # a sibling script: it reads transfer_bound.json for its own tables

    return next((o for o in quality.offline_control("openclipart-paired") if o["seed"] == seed), None)


def run_offline(overrides: list[str], sites: int, seed: int) -> dict[str, Any]:
    """The offline control at one grid point, as a run's summary."""
    import transfer_bound  # a sibling script: benchmarks are not installed

    setup = transfer_bound.Setup(seed, [o for o in overrides if o.startswith("data_dir")], sites)
    result = transfer_bound.offline_control(setup, teacher_epochs=10, epochs=100, weight=10.0)
    return {
        "strategy": OFFLINE,
        "seed": seed,
        "final": {"retrieval": {"rsum": result["test"]}, "val_retrieval": {"rsum": result["val"]}},
        "offline": result,
    }


def published_row(federation: str) -> dict[str, Any] | None:
    """The 1,500-public, 6-site point of ``regress`` from ``quality-openclipart-paired.json`` and
    ``transfer_bound.json`` (the same spec, code and seeds), shaped like a computed row."""
    quality_file = HERE / "results" / "quality-openclipart-paired.json"
    bound_file = HERE / "results" / "transfer_bound.json"
    if federation != "regress" or not quality_file.exists() or not bound_file.exists():
        return None
    published = json.loads(quality_file.read_text())
    offline = [
        o["final"]["retrieval"]["rsum"] for o in (published_offline(seed) for seed in published["seeds"]) if o
    ]
    rows = {r["strategy"]: r for r in published["rows"]}
    test = {
        k: {"mean": rows[k]["test_rsum_mean"], "std": rows[k]["test_rsum_std"]}
        for k in ("regress", "site-free", CEILING)
    }
    test[OFFLINE] = test[OFFLINE_ALL] = {
        "mean": float(np.mean(offline)),
        "std": float(np.std(offline, ddof=1)),
    }
    diff = next(
        d for d in published["paired"] if d["treated"] == "regress" and d["control"].startswith("offline")
    )
    return {
        "public": BUILTIN_PUBLIC,
        "sites": spec_sites(),
        "test": test,
        "strongest_control": OFFLINE,
        "difference": {
            k: diff[k] for k in ("treated", "seeds", "per_seed", "mean", "sd", "ci_low", "ci_high")
        }
        | {"control": OFFLINE},
        "gap_closed": diff["gap_closed"],
        "from": [quality_file.name, bound_file.name],
    }


def point_row(
    federation: str, controls: list[str], by: dict[str, dict[int, dict[str, float]]], public: int, sites: int
) -> dict[str, Any]:
    """One grid point: test means and sample std, the strongest control by val, the paired
    difference against it and the share of the gap to the ceiling closed."""
    test = {k: {s: v["test"] for s, v in d.items()} for k, d in by.items() if d}
    ran = [c for c in controls if by[c]]
    val_mean = {c: float(np.mean([v["val"] for v in by[c].values()])) for c in ran}
    strongest = max(ran, key=val_mean.__getitem__)
    diff = paired_difference(federation, strongest, test[federation], test[strongest])
    means = {k: float(np.mean(list(v.values()))) for k, v in test.items()}
    return {
        "public": public,
        "sites": sites,
        "test": {
            k: {"mean": means[k], "std": float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else None}
            for k, v in test.items()
        },
        "strongest_control": strongest,
        "difference": diff.model_dump(),
        "gap_closed": gap_closed(means[federation], means[strongest], means[CEILING]),
    }


def plot(rows: list[dict[str, Any]], names: list[str], path: Path) -> None:
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
        for name in names:
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


def write_tables(
    rows: list[dict[str, Any]], names: list[str], seeds: list[int], out: Path, name: str
) -> None:
    table = Table(title=f"{name}: server test rsum, mean over seeds {seeds}")
    for col in ("public", "sites", *names, "fed − strongest [95 %]", "gap closed"):
        table.add_column(col, justify="right")
    lines = [
        f"| public | paired sites | {' | '.join(names)} | federation − strongest control [95 %] | gap closed |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for r in rows:
        d = r["difference"]
        ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
        closed = "—" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f} %"
        cells = [
            f"{r['test'][k]['mean']:.1f}" + (f" ± {r['test'][k]['std']:.1f}" if r["test"][k]["std"] else "")
            if k in r["test"]
            else "not run"
            for k in names
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
            f"({r['strongest_control']}, {len(d['seeds'])} seeds) | {closed} |"
        )
    (out / f"{name}.md").write_text("\n".join([*lines, "", f"![{name}]({name}.png)", ""]))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--federation", choices=sorted(CONTROLS), default="cream+")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=None, help="override the spec's rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument(
        "--controls",
        default=None,
        help="site-free controls to run (default: the federation's; public-teachers trains every site "
        "on the public set: slow)",
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
    federation = args.federation
    seeds = [int(s) for s in args.seeds.split(",") if s]
    controls = [c for c in (args.controls or ",".join(CONTROLS[federation])).split(",") if c]
    work = args.out / "runs" / "scaling"
    rows = []
    published = published_row(federation)
    if published:
        rows.append(published)
    grid = GRID if not args.grid else [tuple(int(x) for x in p.split(":")) for p in args.grid.split(",")]
    for public, sites in grid:
        if published and (public, sites) == (published["public"], published["sites"]):
            continue
        by: dict[str, dict[int, dict[str, float]]] = {}
        for strategy in [federation, *controls, CEILING]:
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
        rows.append(point_row(federation, controls, by, public, sites))
    rows.sort(key=lambda r: (-r["sites"], r["public"]))
    name = RESULT_NAME[federation]
    names = [federation, *CONTROLS[federation], CEILING]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(
        json.dumps({"federation": federation, "seeds": seeds, "rounds": args.rounds, "rows": rows}, indent=2)
    )
    plot(rows, names, args.out / f"{name}.png")
    write_tables(rows, names, seeds, args.out, name)


if __name__ == "__main__":
    main()
