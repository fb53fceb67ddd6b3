"""Bytes at equal quality: representation payloads (fp32, fp16, int8, a public subset per
round) against weight averaging of the same site architecture on the same data, with the test
rsum in the same table (issue 14).

The same-architecture openclipart federation (``benchmarks/specs/openclipart-paired-same.toml``:
six paired sites of one architecture, so weights can be averaged), its 10 rounds, in-process
engine. ``cream+`` (the recommended representation exchange) with each payload, against
``fedavgm`` (the strongest weight averaging on this federation, ``benchmarks/results/
quality-openclipart-paired-same.md``) and plain ``fedavg``. Bytes are what the coordinator
counted on the wire per round (down + up, all sites). Each payload is compared with fp32 by
the paired per-seed difference of test rsum (95 % t interval). The break-even public-set size
is where a round of representations costs what a round of weights costs:

    rows* = parameters x 4 bytes / (embed_dim x bytes per value x modalities per row)

for each site model, computed from the architectures' parameter counts.

    python benchmarks/speed/payload.py --seeds 0 1 2
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
from mmfl.simulation.paired import paired_difference
from mmfl.simulation.plan import build_plan

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
RESULTS = HERE / "results"
SPEC = HERE / "specs" / "openclipart-paired-same.toml"
BASE = "cream+, fp32, all 1,500 public rows"
CONFIGS = {
    BASE: ['strategy="cream+"'],
    "cream+, fp16, all 1,500 public rows": ['strategy="cream+"', 'cream.payload_dtype="float16"'],
    "cream+, int8, all 1,500 public rows": ['strategy="cream+"', 'cream.payload_dtype="int8"'],
    "cream+, int8, 500 public rows a round": [
        'strategy="cream+"', 'cream.payload_dtype="int8"', "cream.public_subset=500"
    ],
    "fedavg (weights, fp32)": ['strategy="fedavg"'],
    "fedavgm (weights, fp32)": ['strategy="fedavgm"'],
}  # fmt: skip
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def run(overrides: list[str], seed: int, out: Path) -> dict:
    spec = load_config(FederationSpec, SPEC, [*overrides, f"seed={seed}"])
    summary = json.loads(run_inprocess(build_plan(spec, out)).to_json())
    rounds = summary["rounds"]
    return {
        "seed": seed,
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
    base = {r["seed"]: r["rsum"] for r in results[BASE]}
    lines = [
        "| payload | sites | MB per round (down + up) | test rsum, mean ± sample std | − fp32 cream+ (95 % interval) |",
        "|---|---|---|---|---|",
    ]
    differences = {}
    for name, rows in results.items():
        rsums = [r["rsum"] for r in rows]
        sd = statistics.stdev(rsums) if len(rsums) > 1 else 0.0
        diff = "—"
        if name != BASE:
            d = paired_difference(name, BASE, {r["seed"]: r["rsum"] for r in rows}, base)
            differences[name] = d.model_dump()
            diff = f"{d.mean:+.1f}" + ("" if d.ci_low is None else f" [{d.ci_low:+.1f}, {d.ci_high:+.1f}]")
        lines.append(
            f"| {name} | {rows[0]['sites']} | {statistics.fmean(r['mb_per_round'] for r in rows):.2f} | "
            f"{statistics.fmean(rsums):.1f} ± {sd:.1f} | {diff} |"
        )
    spec = load_config(FederationSpec, SPEC)
    lines += [
        "",
        "| site | parameters | weights MB | break-even public rows (fp32 / fp16 / int8) |",
        "|---|---|---|---|",
    ]
    for site_id, (n, modalities) in counts.items():
        per_row = spec.embed_dim * modalities
        even = " / ".join(f"{n * 4 // (per_row * b):,}" for b in BYTES_PER_VALUE.values())
        lines.append(f"| {site_id} | {n:,} | {n * 4 / 1e6:.2f} | {even} |")
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "payload.json").write_text(
        json.dumps(
            {
                "spec": SPEC.name,
                "seeds": args.seeds,
                "results": results,
                "difference_to_fp32": differences,
                "parameters": {k: v[0] for k, v in counts.items()},
            },
            indent=2,
        )
    )
    (RESULTS / "payload.md").write_text(
        f"# Bytes at equal quality ({SPEC.name}, {spec.rounds} rounds, seeds {args.seeds})\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
