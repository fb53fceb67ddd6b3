"""Quality benchmark: every strategy on digits and openclipart, 3 seeds each.

Prints a table of mean ± std server rsum (test and validation) and the per-site task metrics,
and writes ``benchmarks/results/quality-<dataset>.{json,md}`` plus the runs' reports. Runs use
the in-process engine (numerically identical to Flower's simulation engine; see
``tests/test_simulation.py``). Hyper-parameters were chosen on the validation split; the test
split is only reported.

    python benchmarks/quality.py                       # both data sets, all strategies, seeds 0-2
    python benchmarks/quality.py --datasets digits --seeds 0 --strategies cream,server-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mmfl.config import FederationSpec, load_config
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import comparison_table, write_comparison

HERE = Path(__file__).resolve().parent
SPECS = {"digits": HERE / "specs" / "digits.toml", "openclipart": HERE / "specs" / "openclipart.toml"}
STRATEGIES = ["server-only", "local", "mean", "fedavg", "cream", "cream+", "centralized"]


def run(
    dataset: str,
    strategies: list[str],
    seeds: list[int],
    out: Path,
    overrides: list[str],
    reuse: bool = False,
) -> list[dict]:
    summaries = []
    for strategy in strategies:
        for seed in seeds:
            spec = load_config(
                FederationSpec, SPECS[dataset], [*overrides, f'strategy="{strategy}"', f"seed={seed}"]
            )
            run_dir = out / dataset / f"{strategy.replace('+', 'plus')}-s{seed}"
            done = run_dir / "summary.json"
            # Reuse when the stored spec, read with today's defaults, is the spec asked for.
            if reuse and done.exists() and load_config(FederationSpec, run_dir / "spec.toml") == spec:
                summaries.append(json.loads(done.read_text()))
                print(f"{dataset} {strategy} seed {seed}: reused {done}", flush=True)
                continue
            shutil.rmtree(run_dir, ignore_errors=True)  # a run folder from older code is not reused
            t0 = time.perf_counter()
            summary = run_inprocess(build_plan(spec, run_dir, force=True))
            rsum = (summary["final"]["retrieval"] or {}).get("rsum")
            print(
                f"{dataset} {strategy} seed {seed}: test rsum {rsum}, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            summaries.append(summary)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="digits,openclipart")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--set", action="append", default=[], help="spec override for every run")
    parser.add_argument(
        "--reuse", action="store_true", help="keep finished runs whose spec is unchanged; run only the rest"
    )
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    console = Console()
    for dataset in [d for d in args.datasets.split(",") if d]:
        summaries = run(dataset, strategies, seeds, args.out / "runs", args.set, args.reuse)
        write_comparison(summaries, args.out / "runs" / dataset)
        rows = comparison_table(summaries)
        result = {"dataset": dataset, "seeds": seeds, "overrides": args.set, "rows": rows}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"quality-{dataset}.json").write_text(json.dumps(result, indent=2))
        md = (args.out / "runs" / dataset / "comparison.md").read_text()
        # The run folders are not committed; the plots next to the tables are.
        for png in (args.out / "runs" / dataset).glob("*.png"):
            shutil.copyfile(png, args.out / f"quality-{dataset}-{png.name}")
            md = md.replace(f"]({png.name})", f"](quality-{dataset}-{png.name})")
        (args.out / f"quality-{dataset}.md").write_text(md)
        table = Table(title=f"{dataset}: server rsum, mean ± std over seeds {seeds}")
        for col in ("strategy", "test rsum", "val rsum", "MB/round", "s/run"):
            table.add_column(col, justify="right")
        for r in rows:
            fmt = lambda m, s: "—" if m is None else f"{m:.1f} ± {s:.1f}"  # noqa: E731
            table.add_row(
                r["strategy"],
                fmt(r["test_rsum_mean"], r["test_rsum_std"]),
                fmt(r["val_rsum_mean"], r["val_rsum_std"]),
                f"{r['bytes_per_round_mean'] / 1e6:.1f}",
                f"{r['wall_seconds_mean']:.0f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
