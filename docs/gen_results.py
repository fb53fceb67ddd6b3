"""Write the README's results table from the quality benchmark's files, never by hand.

    python docs/gen_results.py           # rewrite the block between the markers in README.md
    python docs/gen_results.py --check   # exit 1 when README.md's block differs from what it would write

One row per benchmark federation (``benchmarks/specs/NAME.toml``): the method ``strategy = "auto"``
chooses for it, the model a run of that method delivers, the coordinator alone, and the centralized
ceiling, all read from ``benchmarks/results/quality-*.json`` (and, for the offline control, the
``transfer_bound`` file the quality benchmark names). A number the files do not hold is written
as "—". Standard library only: the script runs before mmfl is installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
MISSING = "—"


@dataclass(frozen=True)
class Federation:
    spec: str  # benchmarks/specs/<spec>.toml
    sites: str  # what its sites hold, in a few words
    result: str  # the quality benchmark's file under benchmarks/results/
    method: str  # what `strategy = "auto"` chooses for these sites (docs/simulate.md, "The default method")
    section: str  # the section of docs/results.md that holds its tables


FEDERATIONS = (
    Federation(
        "digits",
        "the demo's six sites of three kinds (two paired)",
        "quality-digits-regress.json",
        "regress",
        "digits-the-demo-federation",
    ),
    Federation(
        "openclipart-paired",
        "six paired sites, each with its own architectures",
        "quality-openclipart-paired-release.json",
        "regress",
        "what-the-all-paired-federation-delivers",
    ),
    Federation(
        "openclipart",
        "two paired, two image-only, two text-only sites",
        "quality-openclipart-release.json",
        "regress",
        "what-the-mixed-federation-delivers",
    ),
    Federation(
        "openclipart-tiers",
        "three groups of two paired sites (large, medium, small models)",
        "quality-openclipart-tiers.json",
        "regress",
        "tiers-groups-of-sites-with-one-model",
    ),
    Federation(
        "openclipart-paired-same",
        "six paired sites, one architecture",
        "quality-openclipart-paired-same.json",
        "fedavgm",
        "same-architecture-everywhere-fedavg-done-well",
    ),
)

# Servers built without any site's data (benchmarks/quality/quality.py, `site_free`).
SITE_FREE = ("server-only", "site-free", "public-teachers", "regress-public")
OFFLINE_CONTROL = "offline public teachers, regression"
DEFAULT_OFFLINE_FILE = "benchmarks/results/transfer_bound.json"
# What a run builds beside its federation and may deliver instead (docs/simulate.md, "What a run
# delivers"): server-only and the method's offline control; FedAvg's family has server-only only.
OWN_CONTROL = {"cream": "site-free", "cream+": "site-free", "mean": "site-free", "regress": "regress-public"}
CEILING = "centralized"


@dataclass(frozen=True)
class Server:
    name: str
    test_mean: float
    test_std: float | None
    val_mean: float | None


def _num(value: float, signed: bool = False) -> str:
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text.replace("-", "−")


def _score(server: Server | None, named: bool = True) -> str:
    if server is None:
        return MISSING
    spread = "" if server.test_std is None else f" ± {_num(server.test_std)}"
    score = f"{_num(server.test_mean)}{spread}"
    name = (
        "offline control"
        if server.name == OFFLINE_CONTROL
        else server.name
        if server.name.startswith(("the ", "`"))
        else f"`{server.name}`"
    )
    return f"{name} {score}" if named else score


def _offline_control(data: dict) -> Server | None:
    """The offline control as benchmarks/quality/quality.py compares it: the transfer bound's student of
    public-only teachers, over the quality run's seeds."""
    path = ROOT / (data.get("offline_control_file") or DEFAULT_OFFLINE_FILE)
    if not path.exists():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    seeds = [str(s) for s in data["seeds"] if "public/regress" in results.get(str(s), {}).get("students", {})]
    if not seeds:
        return None
    test = [results[s]["students"]["public/regress"]["test"] for s in seeds]
    val = [results[s]["students"]["public/regress"]["val"] for s in seeds]
    return Server(
        OFFLINE_CONTROL,
        statistics.fmean(test),
        statistics.stdev(test) if len(test) > 1 else None,
        statistics.fmean(val),
    )


def servers(data: dict) -> dict[str, Server]:
    found = {
        row["strategy"]: Server(
            row["strategy"], row["test_rsum_mean"], row.get("test_rsum_std"), row.get("val_rsum_mean")
        )
        for row in data["rows"]
        if row.get("test_rsum_mean") is not None
    }
    if any(p["control"] == OFFLINE_CONTROL for p in data.get("paired", [])):
        offline = _offline_control(data)
        if offline is not None:
            found[OFFLINE_CONTROL] = offline
    return found


def _best_by_val(candidates: list[Server]) -> Server | None:
    scored = [s for s in candidates if s.val_mean is not None]
    return max(scored, key=lambda s: s.val_mean) if scored else None


def row(fed: Federation) -> list[str]:
    data = json.loads((RESULTS / fed.result).read_text(encoding="utf-8"))
    if data["dataset"] != fed.spec:
        raise SystemExit(f"{fed.result}: holds {data['dataset']!r}, not {fed.spec!r}")
    found = servers(data)
    method = found.get(fed.method)
    alone = _best_by_val([s for name, s in found.items() if name in (*SITE_FREE, OFFLINE_CONTROL)])
    delivered = _best_by_val(
        [found[n] for n in (fed.method, "server-only", OWN_CONTROL.get(fed.method)) if n in found]
    )
    if method is None:
        delivered = None  # the federation itself was not run: nothing to compare it with
    treated = fed.method
    released = [d for d in data.get("deliverables", []) if d["strategy"] == f"{fed.method} delivered"]
    if released and method is not None:
        # the sites released their models: each seed's delivered model, as the run chose it on val
        tests = [d["test_rsum"] for d in released]
        chosen = [d["chosen"] for d in released]
        ensemble = sum(c == f"{fed.method} ensemble" for c in chosen)
        what = (
            "the sites' ensemble"
            if ensemble == len(chosen)
            else f"the sites' ensemble on {ensemble} of {len(chosen)} seeds, else `{fed.method}`"
            if ensemble
            else f"`{fed.method}`"
        )
        delivered = Server(
            what, statistics.fmean(tests), statistics.stdev(tests) if len(tests) > 1 else None, None
        )
        treated = f"{fed.method} delivered"
    diff = next(
        (
            p
            for p in data.get("paired", [])
            if alone is not None and p["treated"] == treated and p["control"] == alone.name
        ),
        None,
    )
    gain = (
        MISSING
        if diff is None
        else f"{_num(diff['mean'], True)} [{_num(diff['ci_low'], True)}, {_num(diff['ci_high'], True)}]"
    )
    return [
        f"[`{fed.spec}`](benchmarks/specs/{fed.spec}.toml): {fed.sites}",
        f"`{fed.method}`",
        str(len(data["seeds"])),
        _score(delivered),
        _score(alone),
        gain,
        _score(found.get(CEILING), named=False),
        f"[results](docs/results.md#{fed.section}), `{fed.result}`",
    ]


def table() -> str:
    header = [
        "federation",
        "method (`auto`)",
        "seeds",
        "delivered",
        "the coordinator alone",
        "delivered − coordinator alone [95 %]",
        "centralized",
        "tables",
    ]
    lines = [
        "<!-- generated by `python docs/gen_results.py` from benchmarks/results/: edit the script, not the table -->",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row(fed)) + " |" for fed in FEDERATIONS]
    lines += [
        "",
        "Server test rsum (R@1+5+10 both ways) after the last round, mean ± sample std over the seeds.",
        "*Delivered*: where the sites released their final models, what each run delivered: the best on",
        "val of the server, the sites' ensemble and every site-free run of the seed; elsewhere the better",
        "on val of the method's model, `server-only` and the method's own control",
        "([What a run delivers](docs/simulate.md#what-a-run-delivers)), applied to the seed means",
        "(those files keep means, and the difference is then the method's). *The coordinator",
        "alone*: the strongest server built without any site, chosen on val; the *offline control* is",
        "public-only teachers distilled into the server by regression",
        "([transfer bound](docs/results.md#how-much-can-reach-the-server-through-the-public-set-at-all)).",
        f"The difference is paired by seed (95 % t interval); {MISSING}: the result file holds no such comparison.",
    ]
    return "\n".join(lines)


def render(readme: str) -> str:
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README.name}: no {BEGIN} ... {END} block")
    return readme[: start + len(BEGIN)] + "\n" + table() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's table is out of date")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{README.name}: the results table is out of date; run python docs/gen_results.py")
            return 1
        print(f"{README.name}: the results table is up to date")
        return 0
    if wanted != current:
        README.write_text(wanted, encoding="utf-8")
        print(f"{README.name}: results table written")
    else:
        print(f"{README.name}: results table unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
