"""Each site's contribution: leave-one-site-out (LOSO) on val.

For every seed the federation runs once with all its sites and once without each site; the
site's rows are left out *after* the partition is drawn, so the other sites hold exactly the
rows they hold in the full run. A site's contribution on seed ``s`` is

    c_site(s) = val_rsum(all sites, s) - val_rsum(all sites but this one, s)

reported as the mean over seeds with its paired 95 % t interval and the sample std
(``simulation/paired.py``): positive helps, negative hurts, an interval across zero is not
measurable at this many seeds. Test rsum is reported beside it, never used to choose. A site the
method refuses (e.g. a uni-modal site under ``regress``) contributes exactly 0.

    python benchmarks/quality/contributions.py --strategy cream+ --seeds 0,1,2
    python benchmarks/quality/contributions.py --spec benchmarks/specs/openclipart.toml --strategy regress

Writes ``benchmarks/results/contributions-<tag>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmfl.config import FederationSpec, RunPlan, SiteConfig, load_config
from mmfl.files import atomic_write_text
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.paired import paired_difference, sample_std
from mmfl.simulation.plan import build_plan
from mmfl.strategies.methods import method_of

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/


def without(plan_dir: Path, site: str) -> None:
    """Remove ``site`` from a built plan: its configuration goes, the others' rows stay."""
    plan = json.loads((plan_dir / "plan.json").read_text())
    configs_path = plan_dir / "site_configs.json"
    configs = [SiteConfig.model_validate(c) for c in json.loads(configs_path.read_text())]
    kept = [c for c in configs if c.site.id != site]
    if len(kept) == len(configs):
        raise SystemExit(f"no site {site!r} in {plan_dir}")
    atomic_write_text(configs_path, json.dumps([c.model_dump(mode="json") for c in kept], indent=2))
    if plan["expected_sites"]:
        plan["expected_sites"] -= 1
    atomic_write_text(plan_dir / "plan.json", json.dumps(plan, indent=2))


def refused(spec: FederationSpec) -> dict[str, str]:
    """The sites the method refuses at discovery, with the reason: leaving one out changes
    nothing (its rows are not pooled, it is never contacted), so its contribution is exactly 0."""
    method = method_of(spec.strategy)
    out = {}
    for site in spec.sites:
        if (
            method.transfer == "regress"
            and spec.regress.sites == "paired"
            and site not in spec.paired_sites()
        ):
            out[site.id] = "refused by regress.sites = paired"
        elif method.site_work == "weights" and site.id not in method.site_architectures(spec):
            out[site.id] = "not a paired site of the common architecture"
    return out


def run_once(spec: FederationSpec, folder: Path, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The run's val and test rsum (the federation's own model: no delivery selection), with the
    sites ``leave_out`` removed after the partition."""
    done = folder / "summary.json"
    if done.exists():
        summary = json.loads(done.read_text())
    else:
        build_plan(spec, folder, force=True)
        for site in leave_out:
            without(folder, site)
        summary = json.loads(run_inprocess(RunPlan.model_validate_json((folder / "plan.json").read_text())).to_json())
    final = summary["final"]
    return {"val": final["val_retrieval"]["rsum"], "test": final["retrieval"]["rsum"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--spec", type=Path, default=None, help="federation spec (default: the built-in digits)"
    )
    parser.add_argument("--strategy", default="cream+")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/contributions"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tag = (
        args.tag
        or f"{(args.spec.stem if args.spec else 'digits-default')}-{args.strategy.replace('+', 'plus')}"
    )
    overrides = [*args.overrides, f'strategy="{args.strategy}"', "delivery.select=false"]
    spec0 = load_config(FederationSpec, args.spec, overrides)
    left_alone = refused(spec0)
    sites = [s.id for s in spec0.sites if s.id not in left_alone]
    scores: dict[str | None, dict[int, dict[str, float]]] = {None: {}, **{s: {} for s in sites}}
    t0 = time.perf_counter()
    for seed in seeds:
        spec = spec0.model_copy(update={"seed": seed})
        for leave_out in [None, *sites]:
            folder = args.out / tag / f"s{seed}" / (f"without-{leave_out}" if leave_out else "all")
            scores[leave_out][seed] = run_once(spec, folder, [leave_out] if leave_out else [])
            print(f"seed {seed} {'all sites' if leave_out is None else 'without ' + leave_out}: "
                  f"val {scores[leave_out][seed]['val']:.1f}, {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    rows = []
    for site in sites:
        row: dict[str, Any] = {"site": site}
        for split in ("val", "test"):
            d = paired_difference(
                "all", f"without {site}",
                {s: v[split] for s, v in scores[None].items()},
                {s: v[split] for s, v in scores[site].items()},
            )  # fmt: skip
            row[split] = {"mean": d.mean, "ci": [d.ci_low, d.ci_high], "sd": d.sd, "per_seed": d.per_seed}
        rows.append(row)
    for site, why in left_alone.items():
        zero = {"mean": 0.0, "ci": [0.0, 0.0], "sd": 0.0, "per_seed": [0.0] * len(seeds), "why": why}
        rows.append({"site": site, "val": zero, "test": zero})
    full_val = [v["val"] for v in scores[None].values()]
    result = {
        "spec": str(args.spec or "default"),
        "strategy": args.strategy,
        "seeds": seeds,
        "overrides": args.overrides,
        "all_sites_val": {"mean": sum(full_val) / len(full_val), "sd": sample_std(full_val)},
        "contributions": rows,
        "wall_seconds": time.perf_counter() - t0,
    }
    results = HERE / "results"
    atomic_write_text(results / f"contributions-{tag}.json", json.dumps(result, indent=2) + "\n")
    table = Table(title=f"leave-one-site-out, {args.strategy}, seeds {args.seeds} (val rsum; test beside)")
    for col in ("site", "contribution on val", "95 % CI", "sd", "on test"):
        table.add_column(col, justify="right")
    fmt = lambda v: "—" if v is None else f"{v:+.2f}"  # noqa: E731
    md = [f"# Each site's contribution: {args.strategy} ({result['spec']})", "",
          f"Leave-one-site-out on val, seeds {args.seeds}; the federation with every site scores "
          f"{result['all_sites_val']['mean']:.1f} val rsum. `python benchmarks/quality/contributions.py "
          f"--strategy {args.strategy} --seeds {args.seeds}`.", "",
          "| site | contribution on val | 95 % CI | sd | on test |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        v, t = r["val"], r["test"]
        ci = f"[{fmt(v['ci'][0])}, {fmt(v['ci'][1])}]"
        if "why" in v:
            ci = f"0 by construction ({v['why']})"
        table.add_row(r["site"], fmt(v["mean"]), ci, fmt(v["sd"]), fmt(t["mean"]))
        md.append(f"| {r['site']} | {fmt(v['mean'])} | {ci} | {fmt(v['sd'])} | {fmt(t['mean'])} |")
    Console(width=140).print(table)
    atomic_write_text(results / f"contributions-{tag}.md", "\n".join(md) + "\n")
    plot(rows, results / f"contributions-{tag}.png", args.strategy)


def plot(rows: list[dict[str, Any]], path: Path, strategy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [r["val"]["mean"] for r in rows]
    low = [
        r["val"]["mean"] - (r["val"]["ci"][0] if r["val"]["ci"][0] is not None else r["val"]["mean"])
        for r in rows
    ]
    high = [
        (r["val"]["ci"][1] if r["val"]["ci"][1] is not None else r["val"]["mean"]) - r["val"]["mean"]
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = ["tab:green" if m > 0 else "tab:red" for m in means]
    ax.bar([r["site"] for r in rows], means, yerr=[low, high], color=colors, capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("val rsum: all - without the site")
    ax.set_title(f"each site's contribution ({strategy}, 95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
