"""The centralized ceiling with and without the uni-modal sites' rows.

``centralized`` pools every site's training rows at the server exactly as the sites hold them;
here it also runs with the uni-modal sites' rows left out *after* the partition is drawn (the
paired sites hold the same rows in both runs, as in ``benchmarks/quality/contributions.py``). The
difference is what the uni-modal rows are worth when nothing is lost in transfer: the most any
method can gain from those sites.

    python benchmarks/quality/ceiling.py --spec benchmarks/specs/openclipart.toml

Writes ``benchmarks/results/ceiling-<spec>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmfl.config import FederationSpec, load_config
from mmfl.simulation.paired import paired_difference, sample_std

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
from contributions import run_once  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=HERE / "specs" / "openclipart.toml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    name = args.spec.stem
    runs = args.out / "runs" / f"ceiling-{name}"
    paired_only = "paired sites' rows only"
    rows: dict[str, dict[int, dict[str, float]]] = {"all rows": {}, paired_only: {}}
    uni: list[str] = []
    for seed in seeds:
        spec = load_config(FederationSpec, args.spec, overrides=['strategy="centralized"', f"seed={seed}"])
        uni = [s.id for s in spec.sites if s not in spec.paired_sites()]
        rows["all rows"][seed] = run_once(spec, runs / f"all-s{seed}")
        rows[paired_only][seed] = run_once(spec, runs / f"paired-s{seed}", uni)
        print(
            f"seed {seed}: all rows {rows['all rows'][seed]}, paired only {rows[paired_only][seed]}",
            flush=True,
        )
    result: dict[str, object] = {
        "spec": str(args.spec.relative_to(HERE.parent)),
        "uni_modal_sites": uni,
        "seeds": seeds,
    }
    lines = [
        f"# The centralized ceiling of `{name}` with and without the uni-modal sites' rows",
        "",
        f"Uni-modal sites left out: {', '.join(uni)}. Seeds {', '.join(map(str, seeds))}; mean ± sample std.",
        "",
        "| rows pooled | val rsum | test rsum |",
        "|---|---:|---:|",
    ]
    for label, by_seed in rows.items():
        val = [by_seed[s]["val"] for s in seeds]
        test = [by_seed[s]["test"] for s in seeds]
        result[label] = {"per_seed": by_seed, "val_mean": sum(val) / len(val), "test_mean": sum(test) / len(test),
                         "val_sd": sample_std(val), "test_sd": sample_std(test)}  # fmt: skip
        lines.append(
            f"| {label} | {sum(val) / len(val):.1f} ± {sample_std(val) or 0:.1f} | "
            f"{sum(test) / len(test):.1f} ± {sample_std(test) or 0:.1f} |"
        )
    lines.append("")
    for key in ("val", "test"):
        d = paired_difference(
            "all rows", "paired only",
            {s: v[key] for s, v in rows["all rows"].items()},
            {s: v[key] for s, v in rows[paired_only].items()},
        )  # fmt: skip
        result[f"uni_modal_rows_worth_{key}"] = d.model_dump()
        interval = f" [{d.ci_low:+.1f}, {d.ci_high:+.1f}]" if d.ci_low is not None else ""
        lines.append(
            f"- What the uni-modal rows add to the ceiling, {key}: {d.mean:+.1f}{interval} "
            f"(per seed {', '.join(f'{x:+.1f}' for x in d.per_seed)})"
        )
    (args.out / f"ceiling-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"ceiling-{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
