"""Quality benchmark: does the sites' knowledge reach the server?

Every method of a spec under ``benchmarks/specs/`` over the same seeds (5 by default), then:

* the server's test rsum after the last round and at each run's best-val round, mean ± sample
  std (ddof 1), and val rsum;
* each federated method against every site-free run (``server-only``; ``site-free``: the
  server's own representations; ``public-teachers``: the sites' architectures trained on the
  public set alone, ensembled as the sites would be; ``regress-public``: ``regress`` with such
  sites) and against the strongest of them (the one with the highest mean *val* rsum): the paired per-seed difference ``federation - control`` with its
  95 % t interval, and the share of the control-to-``centralized`` gap it closes;
* the teachers (the sites' final models, evaluated offline by
  :mod:`benchmarks.teachers`): the sites' ensemble against the public-only ensemble (what the
  private data holds) and against the server (what the transfer loses).

Writes ``benchmarks/results/quality-<spec>.{json,md}`` and the per-round plot. Runs use the
in-process engine (numerically identical to Flower's simulation engine; see
``tests/test_simulation.py``). Nothing here is selected on test: the strongest control is the
one with the highest val rsum, and the best-val round is chosen on val.

    python benchmarks/quality/quality.py                                   # every spec, 5 seeds
    python benchmarks/quality/quality.py --datasets openclipart-paired --seeds 0,1 --reuse
    python benchmarks/quality/quality.py --datasets openclipart-paired \\
        --strategies server-only,site-free,cream+,public-teachers,centralized \\
        --set cream.ensemble_temperature=0.2 --set cream.kd_weight=0.3 --tag sweep-choice
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmfl.config import FederationSpec, load_config
from mmfl.protocols.summary import RunSummary
from mmfl.simulation import paired as pairing
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.paired import sample_std
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import comparison_table, federated_method, site_free_method, write_comparison
from mmfl.strategies.methods import METHODS

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
from teachers import teacher_retrieval  # noqa: E402

SPECS = {
    name: HERE / "specs" / f"{name}.toml"
    for name in (
        "digits",
        "openclipart",
        "openclipart-paired",
        "openclipart-paired-same",
        "openclipart-tiers",
    )
}
STRATEGIES = [
    "server-only",
    "site-free",
    "public-teachers",
    "local",
    "mean",
    "fedavg",
    "fedavg-public",
    "fedprox",
    "fedavgm",
    "cream",
    "cream+",
    "regress-public",
    "regress",
    "centralized",
]
CEILING = "centralized"


def run(
    dataset: str, strategies: list[str], seeds: list[int], out: Path, overrides: list[str], reuse: bool
) -> list[dict]:
    summaries = []
    for strategy in strategies:
        for seed in seeds:
            spec = load_config(
                FederationSpec, SPECS[dataset], [*overrides, f'strategy="{strategy}"', f"seed={seed}"]
            )
            run_dir = out / f"{strategy.replace('+', 'plus')}-s{seed}"
            done = run_dir / "summary.json"
            # Reuse when the stored spec, read with today's defaults, is the spec asked for.
            if reuse and done.exists() and load_config(FederationSpec, run_dir / "spec.toml") == spec:
                summary = json.loads(done.read_text())
                print(f"{dataset} {strategy} seed {seed}: reused {done}", flush=True)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)  # a run folder from older code is not reused
                t0 = time.perf_counter()
                summary = json.loads(run_inprocess(build_plan(spec, run_dir, force=True)).to_json())
                rsum = (summary["final"]["retrieval"] or {}).get("rsum")
                print(
                    f"{dataset} {strategy} seed {seed}: test rsum {rsum}, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            summary["_run_dir"] = str(run_dir)
            summaries.append(summary)
    return summaries


OFFLINE_CONTROL = "offline public teachers, regression"
"""The strongest site-free server known on OpenClipart: :mod:`transfer_bound`'s student
regressed onto public-only teachers (the paired federation's architectures), read from
``results/transfer_bound.json`` and compared like any control. It uses no site, and the
public, val and test splits are the prepared data set's, the same for every OpenClipart spec
and seed, so it is a control of the mixed federation too."""
OFFLINE_CONTROL_SPECS = ("openclipart", "openclipart-paired", "openclipart-tiers")


OFFLINE_CONTROL_FILE = HERE / "results" / "transfer_bound.json"


def offline_control(dataset: str, path: Path = OFFLINE_CONTROL_FILE, required: bool = False) -> list[dict]:
    """Per seed, the offline control as a summary (final test and val rsum) from a
    :mod:`transfer_bound` result file; none for specs other than OpenClipart's, or when the
    default file is absent. A file named by the user (``required``) must exist and be a result."""
    if dataset not in OFFLINE_CONTROL_SPECS:
        return []
    if not path.exists():
        if required:
            raise SystemExit(f"{path}: no such transfer_bound result file")
        return []
    try:
        data = json.loads(path.read_text())
        results = data["results"]
        passes = data["settings"]["regress_epochs"]
        return [
            {
                "strategy": OFFLINE_CONTROL,
                "seed": int(seed),
                "passes": passes,
                "final": {
                    "retrieval": {"rsum": r["students"]["public/regress"]["test"]},
                    "val_retrieval": {"rsum": r["students"]["public/regress"]["val"]},
                },
            }
            for seed, r in results.items()
            if "public/regress" in r["students"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SystemExit(f"{path}: not a transfer_bound result file") from None


def site_free(name: str) -> bool:
    """A run that uses no site's data: server-only, every control, the offline control."""
    return name == OFFLINE_CONTROL or site_free_method(name)


ENSEMBLE, DELIVERED = "{} ensemble", "{} delivered"


def deliverables(summaries: list[dict]) -> list[dict]:
    """Per seed of a run whose sites released their final models (``--set
    sites.N.policy.release_final_model=true``): the sites' ensemble as a run of its own
    (``regress ensemble``), and what the coordinator delivers (``regress delivered``): the
    best **on val** of the federation's server, the ensemble and every site-free run of the
    same seed (the offline control included), as :class:`~mmfl.protocols.delivery.Delivery`
    chooses."""
    out: list[dict] = []
    for s in summaries:
        found = [c for c in (s.get("delivery") or {}).get("candidates", []) if c["source"] == "ensemble"]
        if not found or found[0]["val_rsum"] is None:
            continue
        ens = found[0]
        ensemble = {
            "strategy": ENSEMBLE.format(s["strategy"]),
            "seed": s["seed"],
            "members": (s["delivery"].get("ensemble") or {}).get("sites", []),
            "final": {"retrieval": {"rsum": ens["test_rsum"]}, "val_retrieval": {"rsum": ens["val_rsum"]}},
        }
        pool = [s, ensemble] + [
            c
            for c in summaries
            if c["seed"] == s["seed"] and site_free(c["strategy"]) and c["final"].get("val_retrieval")
        ]
        best = max(pool, key=lambda c: c["final"]["val_retrieval"]["rsum"])  # first wins a tie
        out += [
            ensemble,
            {
                "strategy": DELIVERED.format(s["strategy"]),
                "seed": s["seed"],
                "chosen": best["strategy"],
                "final": best["final"],
            },
        ]
    return out


def compared(name: str) -> bool:
    """A federation with a server model, or a deliverable of one (its ensemble, what it delivers)."""
    return name not in METHODS or federated_method(name)


def paired_rows(summaries: list[dict]) -> list[dict[str, Any]]:
    """Each federated method against every site-free run (its own controls and those of the
    other methods: any of them is a server the coordinator could build without a site) and
    the strongest of them by val (:func:`mmfl.simulation.paired.paired_rows`)."""
    return pairing.paired_rows(summaries, site_free, compared, CEILING)


def cached_teachers(run_dir: Path) -> dict[str, float]:
    """:func:`teachers.teacher_retrieval` of a finished run, kept in ``RUN/teachers.json`` (a
    reused run's sites do not change, and evaluating them takes most of a minute)."""
    cache = run_dir / "teachers.json"
    if cache.exists():
        return json.loads(cache.read_text())
    teachers = teacher_retrieval(run_dir)
    cache.write_text(json.dumps(teachers))
    return teachers


def teacher_rows(summaries: list[dict]) -> list[dict[str, Any]]:
    """Per representation-exchange run: the teachers' ensemble and the student, on test."""
    rows = []
    for s in summaries:
        method = METHODS[s["strategy"]]
        if method.site_work != "represent" or not s["final"].get("retrieval"):
            continue
        teachers = cached_teachers(Path(s["_run_dir"]))
        rows.append(
            {
                "strategy": s["strategy"],
                "seed": s["seed"],
                "ensemble": teachers.pop("ensemble"),
                "best_site": max(teachers.values()),
                "sites": teachers,
                "student": s["final"]["retrieval"]["rsum"],
            }
        )
    return rows


def teacher_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for strategy in sorted({r["strategy"] for r in rows}):
        mine = [r for r in rows if r["strategy"] == strategy]
        entry: dict[str, Any] = {"strategy": strategy, "seeds": [r["seed"] for r in mine]}
        for key in ("ensemble", "best_site", "student"):
            values = [r[key] for r in mine]
            entry[key] = {"mean": sum(values) / len(values), "std": sample_std(values)}
        out.append(entry)
    return out


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as the committed logs name files)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def markdown(
    name: str,
    seeds: list[int],
    paired: list[dict],
    teachers: list[dict],
    rows: list[dict],
    overrides: list[str],
    offline: tuple[Path, int] | None = None,
    delivered: list[dict] | None = None,
) -> str:
    lines = [
        f"# Quality on `{name}` (seeds {', '.join(map(str, seeds))})",
        "",
        *([f"Every run with {', '.join(f'`{o}`' for o in overrides)}.", ""] if overrides else []),
        *(
            [
                f"The offline control ({OFFLINE_CONTROL}, {offline[1]} passes) is read from "
                f"`{_shown(offline[0])}`.",
                "",
            ]
            if offline is not None
            else []
        ),
        "Server test rsum after the last round and at each run's best-val round, mean ± sample std.",
        "",
        "| strategy | seeds | test rsum, last round | test rsum, best-val round | val rsum | MB per round |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {len(r['seeds'])} | {_pm(r['test_rsum_mean'], r['test_rsum_std'])} | "
            f"{_pm(r['best_val_test_rsum_mean'], r['best_val_test_rsum_std'])} | "
            f"{_pm(r['val_rsum_mean'], r['val_rsum_std'])} | {r['bytes_per_round_mean'] / 1e6:.2f} |"
        )
    if delivered:
        lines += [
            "",
            "The sites released their final models: the sites' ensemble (members chosen on val) and "
            "the delivered model (the best on val of the server, the ensemble and every site-free run "
            "of the seed), test rsum:",
            "",
            "| seed | run | test rsum | val rsum | chosen | ensemble members |",
            "|---|---|---|---|---|---|",
        ]
        for d in sorted(delivered, key=lambda d: (d["strategy"], d["seed"])):
            lines.append(
                f"| {d['seed']} | {d['strategy']} | {d['test_rsum']:.1f} | {d['val_rsum']:.1f} | "
                f"{d.get('chosen') or '—'} | {', '.join(d.get('members') or []) or '—'} |"
            )
        for strategy in sorted({d["strategy"] for d in delivered}):
            tests = [d["test_rsum"] for d in delivered if d["strategy"] == strategy]
            vals = [d["val_rsum"] for d in delivered if d["strategy"] == strategy]
            lines.append(
                f"| all | **{strategy}** | **{_pm(sum(tests) / len(tests), sample_std(tests))}** | "
                f"{_pm(sum(vals) / len(vals), sample_std(vals))} | | |"
            )
    if paired:
        lines += ["", *pairing.paired_lines(paired, CEILING)]
    if teachers:
        lines += [
            "",
            "Teachers (the sites' final models, evaluated offline; ensemble = sum of the sites' "
            "cosine-similarity matrices) against the server they taught, test rsum:",
            "",
            "| run | teachers' ensemble | best single site | server (student) |",
            "|---|---|---|---|",
        ]
        for t in teachers:
            cells = [_pm(t[k]["mean"], t[k]["std"]) for k in ("ensemble", "best_site", "student")]
            lines.append(f"| {t['strategy']} | " + " | ".join(cells) + " |")
    lines += ["", f"![test rsum per round](quality-{name}-rsum.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(SPECS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--set", action="append", default=[], help="spec override for every run")
    parser.add_argument(
        "--reuse", action="store_true", help="keep finished runs whose spec is unchanged; run only the rest"
    )
    parser.add_argument(
        "--offline-control",
        type=Path,
        default=OFFLINE_CONTROL_FILE,
        help="the transfer_bound result file to read the offline control from (e.g. at 300 passes)",
    )
    parser.add_argument(
        "--tag", default="", help="suffix of the result files (quality-<spec>-<tag>.*), e.g. for --set runs"
    )
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    required = args.offline_control != OFFLINE_CONTROL_FILE
    console = Console()
    for dataset in [d for d in args.datasets.split(",") if d]:
        name = f"{dataset}-{args.tag}" if args.tag else dataset
        runs = args.out / "runs" / name
        summaries = run(dataset, strategies, seeds, runs, args.set, args.reuse)
        typed = [RunSummary.model_validate({k: v for k, v in s.items() if k != "_run_dir"}) for s in summaries]
        write_comparison(typed, runs)
        rows = comparison_table(typed)
        ran = {s["seed"] for s in summaries}
        offline_runs = [
            o for o in offline_control(dataset, args.offline_control, required) if o["seed"] in ran
        ]
        offline = (args.offline_control, offline_runs[0]["passes"]) if offline_runs else None
        delivered = deliverables(summaries + offline_runs)
        paired = paired_rows(summaries + offline_runs + delivered)
        per_run = teacher_rows(summaries)
        teachers = teacher_summary(per_run)
        result = {
            "dataset": dataset,
            "seeds": seeds,
            "overrides": args.set,
            "offline_control_file": _shown(offline[0]) if offline else None,
            "rows": rows,
            "paired": paired,
            "teachers": teachers,
            "teachers_per_run": per_run,
            "deliverables": [
                {k: d.get(k) for k in ("strategy", "seed", "members", "chosen")}
                | {
                    "test_rsum": d["final"]["retrieval"]["rsum"],
                    "val_rsum": d["final"]["val_retrieval"]["rsum"],
                }
                for d in delivered
            ],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"quality-{name}.json").write_text(json.dumps(result, indent=2))
        shutil.copyfile(runs / "rsum.png", args.out / f"quality-{name}-rsum.png")
        (args.out / f"quality-{name}.md").write_text(
            markdown(name, seeds, paired, teachers, rows, args.set, offline, result["deliverables"])
        )
        table = Table(title=f"{dataset}: server test rsum, mean ± sample std over seeds {seeds}")
        for col in ("strategy", "last round", "best-val round", "val rsum", "MB/round"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                r["strategy"],
                _pm(r["test_rsum_mean"], r["test_rsum_std"]),
                _pm(r["best_val_test_rsum_mean"], r["best_val_test_rsum_std"]),
                _pm(r["val_rsum_mean"], r["val_rsum_std"]),
                f"{r['bytes_per_round_mean'] / 1e6:.1f}",
            )
        console.print(table)
        for p in paired:
            ci = "" if p["ci_low"] is None else f" (95 % [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}])"
            console.print(f"{p['treated']} − {p['control']}: {p['mean']:+.1f}{ci}")


if __name__ == "__main__":
    main()
