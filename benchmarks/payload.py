"""Bytes at equal quality: representation payloads (fp32, fp16, a public subset per round)
against FedAvg's weights, with the test rsum in the same table (issue 14).

Default digits federation, 4 rounds, seeds 0-2, in-process engine; bytes are what the
coordinator counted on the wire per round (down + up, all sites). FedAvg averages the paired
sites' weights (``fedavg``: the sites of one shared architecture). The break-even public-set
size is where a round of representations costs what a round of weights costs:

    rows* = parameters x 4 bytes / (embed_dim x bytes per value x modalities per row)

for each site model, computed from the architectures' parameter counts.

    python benchmarks/payload.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from mmfl.client.site import Site
from mmfl.config import FederationSpec, SiteConfig, load_config
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "cream, fp32, all 1,000 public rows": ['strategy="cream"'],
    "cream, fp16, all 1,000 public rows": ['strategy="cream"', 'cream.payload_dtype="float16"'],
    "cream, fp32, 200 public rows a round": ['strategy="cream"', "cream.public_subset=200"],
    "cream, fp16, 200 public rows a round": [
        'strategy="cream"', 'cream.payload_dtype="float16"', "cream.public_subset=200"
    ],
    "fedavg (weights of the paired sites)": ['strategy="fedavg"'],
}  # fmt: skip


def run(overrides: list[str], seed: int, out: Path) -> dict:
    spec = load_config(FederationSpec, overrides=[*overrides, "rounds=4", f"seed={seed}"])
    summary = run_inprocess(build_plan(spec, out))
    rounds = summary["rounds"]
    return {
        "rsum": summary["final"]["retrieval"]["rsum"],
        "mb_per_round": statistics.fmean((r["bytes_down"] + r["bytes_up"]) / 1e6 for r in rounds),
        "sites": len(rounds[0]["sites"]),
    }


def parameter_counts(out: Path) -> dict[str, tuple[int, int]]:
    """(parameters, modalities) of each site's model in the run folder ``out``."""
    configs = json.loads((out / "site_configs.json").read_text())
    counts = {}
    for raw in configs:
        site = Site(SiteConfig.model_validate(raw))
        counts[site.spec.id] = (
            sum(p.numel() for p in site.new_model().parameters()),
            len(site.spec.modalities),
        )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mmfl-bytes-") as tmp:
        for name, overrides in CONFIGS.items():
            results[name] = [run(overrides, s, Path(tmp) / f"{len(results)}-{s}") for s in args.seeds]
            print(name, [round(r["rsum"], 1) for r in results[name]], flush=True)
        counts = parameter_counts(Path(tmp) / f"0-{args.seeds[0]}")
    lines = [
        "| payload | sites | MB per round (down + up) | test rsum, mean ± sample std |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        rsums = [r["rsum"] for r in rows]
        sd = statistics.stdev(rsums) if len(rsums) > 1 else 0.0
        lines.append(
            f"| {name} | {rows[0]['sites']} | {statistics.fmean(r['mb_per_round'] for r in rows):.2f} | "
            f"{statistics.fmean(rsums):.1f} ± {sd:.1f} |"
        )
    spec = load_config(FederationSpec)
    lines += [
        "",
        "| site | parameters | weights MB | break-even public rows (fp32 / fp16) |",
        "|---|---|---|---|",
    ]
    for site_id, (n, modalities) in counts.items():
        per_row = spec.embed_dim * modalities
        lines.append(f"| {site_id} | {n:,} | {n * 4 / 1e6:.2f} | {n // per_row:,} / {2 * n // per_row:,} |")
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "payload.json").write_text(
        json.dumps(
            {"seeds": args.seeds, "results": results, "parameters": {k: v[0] for k, v in counts.items()}},
            indent=2,
        )
    )
    (RESULTS / "payload.md").write_text(
        f"# Bytes at equal quality (digits, 4 rounds, seeds {args.seeds})\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
