"""The unpaired public pool: what it changes, paired per seed against the same runs without it.

Reads the run folders that ``benchmarks/quality/quality.py --tag TAG`` wrote
(``results/runs/<dataset>-<tag>/<strategy>-s<seed>/summary.json``): one tag without the pool and
one or more with it (e.g. a sweep of ``regress.pool_share``). For each pooled tag, per seed, the
compact server's final val and test rsum and the delivered model's, and the paired differences
with their 95 % t intervals (:mod:`mmfl.simulation.paired`). The setting to keep is the one with
the highest mean *val* difference; test is reported, never used to choose.

    python benchmarks/quality/pool.py --dataset openclipart-paired --without release \\
        --with release-pool0.1 --with release-pool0.25 --seeds 0,1 --tag sweep
    python benchmarks/quality/pool.py --without release \\
        --with release-pool0.1,release-pool0.1-c,release-pool0.1-d --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmfl.simulation.paired import paired_difference, sample_std

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/


def read_runs(runs: Path, strategy: str, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Per seed: the server's final val and test rsum and the delivered model's test rsum."""
    out = {}
    for seed in seeds:
        path = runs / f"{strategy}-s{seed}" / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        final = summary["final"]
        # Delivered: the candidate (the server, the sites' ensemble) with the higher val rsum, as
        # benchmarks/quality/quality.py chooses it.
        candidates = (summary.get("delivery") or {}).get("candidates") or [
            {
                "source": "federation",
                "val_rsum": final["val_retrieval"]["rsum"],
                "test_rsum": final["retrieval"]["rsum"],
            }
        ]
        chosen = max(candidates, key=lambda c: c["val_rsum"])
        out[seed] = {
            "server_val": final["val_retrieval"]["rsum"],
            "server_test": final["retrieval"]["rsum"],
            "delivered_test": chosen["test_rsum"],
            "delivered": chosen["source"],
        }
    return out


def compare(
    without: dict[int, dict[str, Any]], pooled: dict[int, dict[str, Any]], tag: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"tag": tag, "seeds": sorted(set(without) & set(pooled)), "per_seed": pooled}
    for key in ("server_val", "server_test", "delivered_test"):
        diff = paired_difference(
            f"{tag} {key}", f"no pool {key}",
            {s: v[key] for s, v in pooled.items()}, {s: v[key] for s, v in without.items()},
        )  # fmt: skip
        values = [pooled[s][key] for s in diff.seeds]
        row[key] = {
            "mean": sum(values) / len(values),
            "sd": sample_std(values),
            "difference": diff.model_dump(),
        }
    return row


def _fmt(x: float | None, sign: bool = False) -> str:
    return "—" if x is None else (f"{x:+.1f}" if sign else f"{x:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="openclipart-paired")
    parser.add_argument("--strategy", default="regress")
    parser.add_argument("--without", required=True, help="the tag of the runs without the pool")
    parser.add_argument(
        "--with", dest="pooled", action="append", required=True,
        help="the tag of runs with it (comma-separated tags gather their seeds into one arm)",
    )  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = args.out / "runs"
    without = read_runs(runs / f"{args.dataset}-{args.without}", args.strategy, seeds)
    rows = []
    for arm in args.pooled:  # an arm may gather several tags' seeds: "pool0.1,pool0.1-more"
        tags = arm.split(",")
        pooled = {}
        for tag in tags:
            pooled.update(read_runs(runs / f"{args.dataset}-{tag}", args.strategy, seeds))
        rows.append(compare(without, pooled, tags[0]))
    best = max(rows, key=lambda r: r["server_val"]["difference"]["mean"])
    chosen = best["tag"] if best["server_val"]["difference"]["mean"] > 0 else "no pool"
    name = f"pool-{args.dataset}" + (f"-{args.tag}" if args.tag else "")
    result = {"dataset": args.dataset, "strategy": args.strategy, "without": args.without,
              "no_pool": without, "rows": rows, "chosen_by_val": chosen}  # fmt: skip
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# The unpaired public pool on {args.dataset} ({args.strategy})",
        "",
        f"Paired per seed against `{args.without}` (no pool), seeds {', '.join(map(str, seeds))}; "
        "differences with their 95 % t interval. Chosen by val (the compact server's mean val "
        f"difference, no pool included): `{chosen}`.",
        "",
        "| runs | server val | Δ val [95 %] | server test | Δ test [95 %] | delivered test | Δ delivered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = {
        k: sum(v[k] for v in without.values()) / max(len(without), 1)
        for k in ("server_val", "server_test", "delivered_test")
    }
    lines.append(
        f"| no pool | {_fmt(base['server_val'])} | | {_fmt(base['server_test'])} | | {_fmt(base['delivered_test'])} | |"
    )
    for r in rows:
        cells = []
        for key in ("server_val", "server_test", "delivered_test"):
            d = r[key]["difference"]
            interval = (
                f" [{_fmt(d['ci_low'], True)}, {_fmt(d['ci_high'], True)}]" if d["ci_low"] is not None else ""
            )
            cells += [_fmt(r[key]["mean"]), f"{_fmt(d['mean'], True)}{interval}"]
        lines.append(f"| {r['tag']} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (server val / test, with the pool − without):", ""]
    for r in rows:
        per = [
            f"s{s}: {r['per_seed'][s]['server_val'] - without[s]['server_val']:+.1f} / "
            f"{r['per_seed'][s]['server_test'] - without[s]['server_test']:+.1f}"
            for s in r["seeds"]
        ]
        lines.append(f"- `{r['tag']}`: " + ", ".join(per))
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
