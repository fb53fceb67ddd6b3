"""Privacy-utility table: server rsum of ``cream+`` with DP-SGD at every site (epsilon 2 and 8
per site over the whole run) and without DP, next to ``server-only``.

The goal: at epsilon 8 the federation keeps at least 90 % of its non-private gain over
server-only, i.e. ``(rsum_eps8 - rsum_server_only) / (rsum_noDP - rsum_server_only) >= 0.9``.
Writes ``benchmarks/results/privacy_utility-<dataset>.json``. Finished runs with an unchanged
spec are reused, so an interrupted benchmark picks up where it stopped.

    python benchmarks/privacy/privacy_utility.py [--datasets digits,openclipart] [--seeds 0,1,2] [--epsilons 2,8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))
from quality import SPECS, run  # noqa: E402

from mmfl.config import FederationSpec, load_config

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/


def dp_overrides(dataset: str, epsilon: float) -> list[str]:
    """DP on at every site of the data set's spec, the budget planned over all its rounds."""
    full = load_config(FederationSpec, SPECS[dataset])
    out = []
    for i in range(len(full.sites)):
        out += [
            f"sites.{i}.privacy.enabled=true",
            f"sites.{i}.privacy.target_epsilon={epsilon}",
            f"sites.{i}.privacy.planned_rounds={full.rounds}",
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="digits,openclipart")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilons", default="2,8")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for dataset in [d for d in args.datasets.split(",") if d]:
        rows = {}
        # The non-private runs are the quality benchmark's own (reused when already run).
        base = run(dataset, ["server-only", "cream+"], seeds, args.out / "runs", [], reuse=True)
        rows["server-only"] = [
            s["final"]["retrieval"]["rsum"] for s in base if s["strategy"] == "server-only"
        ]
        rows["cream+ no DP"] = [s["final"]["retrieval"]["rsum"] for s in base if s["strategy"] == "cream+"]
        spent: dict[str, list[float]] = {}
        for eps in [float(e) for e in args.epsilons.split(",") if e]:
            dp = run(
                dataset,
                ["cream+"],
                seeds,
                args.out / "runs-privacy" / f"eps{eps:g}",
                dp_overrides(dataset, eps),
                reuse=True,
            )
            key = f"cream+ DP eps {eps:g}"
            rows[key] = [s["final"]["retrieval"]["rsum"] for s in dp]
            spent[key] = [max(x["epsilon"] or 0.0 for x in s["rounds"][-1]["sites"]) for s in dp]
        so, full = float(np.mean(rows["server-only"])), float(np.mean(rows["cream+ no DP"]))
        table = {
            k: {
                "rsum_mean": float(np.mean(v)),
                "rsum_std": float(np.std(v)),
                "runs": v,
                "epsilon_spent_max": max(spent[k]) if k in spent else None,
                "share_of_gain": None if full == so else (float(np.mean(v)) - so) / (full - so),
            }
            for k, v in rows.items()
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"privacy_utility-{dataset}.json").write_text(
            json.dumps({"dataset": dataset, "seeds": seeds, "rows": table}, indent=2)
        )
        print(f"\n{dataset}: server rsum (test), mean ± std over seeds {seeds}")
        for k, v in table.items():
            share = (
                ""
                if v["share_of_gain"] is None or k == "server-only"
                else f"  {100 * v['share_of_gain']:.0f} % of the non-private gain"
            )
            eps = (
                ""
                if v["epsilon_spent_max"] is None
                else f"  (max epsilon spent {v['epsilon_spent_max']:.2f})"
            )
            print(f"  {k:22s} {v['rsum_mean']:7.1f} ± {v['rsum_std']:5.1f}{share}{eps}")


if __name__ == "__main__":
    main()
