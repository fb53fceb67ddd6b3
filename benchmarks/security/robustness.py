"""Hostile or broken sites against the representation ensemble, with and without defences.

One site of the default digits federation (six sites; the paired ``pair-cnn-bag``) turns
hostile: it runs the real site code and then replaces what it sends with random unit vectors,
vectors scaled by 100, copies of the global representations it was sent, the other modality's
vectors, or it answers after the round's deadline. Each run is the real in-process federation
(``cream+``, 4 rounds); only the hostile site's replies are rewritten, at the edge where an
attacker would. Defences on: unit-norm check of replies (off: a tolerance of 1e9), per-sample trim of the contributor
farthest from the median, cap of 0.5 on one site's weight (``[cream] unit_norm_tolerance``,
``trim``, ``max_site_weight``). Prints a table and writes ``benchmarks/results/robustness.
{json,md}``. Target: with defences on, every attack's final test rsum within 10 % of the clean
run's.

    python benchmarks/security/robustness.py [--seeds 0 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from rich.console import Console
from rich.table import Table

from mmfl.config import FederationSpec, load_config
from mmfl.protocols.messages import MSG_REPRESENT
from mmfl.protocols.records import arrays_of
from mmfl.simulation.engines import InProcessGrid, run_inprocess
from mmfl.simulation.plan import build_plan

RESULTS = Path(__file__).resolve().parents[1] / "results"
HOSTILE = "pair-cnn-bag"
ATTACKS = ["none", "random", "scaled", "copy", "swap", "late"]
ROUND_TIMEOUT = 30.0
DEFENCES = {
    "off": ["cream.unit_norm_tolerance=1e9", "cream.trim=0", "cream.max_site_weight=1.0"],
    "on": ["cream.unit_norm_tolerance=0.05", "cream.trim=1", "cream.max_site_weight=0.5"],
}


def unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def hostile_grid(attack: str, node: int, seed: int) -> type[InProcessGrid]:
    rng = np.random.default_rng(seed)

    class HostileGrid(InProcessGrid):
        def _call(self, message: Message) -> Message:
            reply = super()._call(message)
            if message.metadata.dst_node_id != node or message.metadata.message_type != MSG_REPRESENT:
                return reply
            if attack == "late":
                time.sleep(ROUND_TIMEOUT + 5)
                return reply
            mine, sent = arrays_of(reply.content), arrays_of(message.content)
            if not mine:
                return reply
            if attack == "random":
                bad = {m: unit(*a.shape, rng) for m, a in mine.items()}
            elif attack == "scaled":
                bad = {m: a * 100 for m, a in mine.items()}
            elif attack == "copy":
                bad = {m: sent[m].astype(a.dtype) for m, a in mine.items()}
            elif attack == "swap":
                names = sorted(mine)
                bad = {m: (mine[names[(i + 1) % len(names)]] if mine[names[(i + 1) % len(names)]].shape == mine[m].shape else unit(*mine[m].shape, rng)) for i, m in enumerate(names)}  # fmt: skip
            else:
                return reply
            reply.content["arrays"] = ArrayRecord({m: Array(np.ascontiguousarray(a)) for m, a in bad.items()})
            return reply

    return HostileGrid


def one_run(attack: str, defences: str, seed: int, rounds: int, root: Path) -> float:
    spec = load_config(
        FederationSpec,
        overrides=[
            'strategy="cream+"', f"seed={seed}", f"rounds={rounds}", f"server.round_timeout={ROUND_TIMEOUT}",
            "delivery.select=false", *DEFENCES[defences],
        ],
    )  # fmt: skip
    plan = build_plan(spec, root / f"{attack}-{defences}-s{seed}")
    node = 1000 + [c.site.id for c in json_configs(plan.site_configs)].index(HOSTILE)
    summary = json.loads(run_inprocess(plan, grid_class=None if attack == "none" else hostile_grid(attack, node, seed)).to_json())
    return float(summary["final"]["retrieval"]["rsum"])


def json_configs(path: Path | None) -> list:
    from mmfl.config import SiteConfig

    return [SiteConfig.model_validate(c) for c in json.loads(Path(path).read_text())] if path else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    args = parser.parse_args()
    args.attacks = ["none", *[a for a in args.attacks if a != "none"]]  # the clean reference
    console = Console()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mmfl-robust-") as tmp:
        for attack in args.attacks:
            for defences in ("off", "on"):
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    rsum = one_run(attack, defences, seed, args.rounds, Path(tmp))
                    results.setdefault(attack, {}).setdefault(defences, []).append(rsum)
                    console.print(
                        f"{attack:>7} defences {defences:>3} seed {seed}: test rsum {rsum:.1f} ({time.perf_counter() - t0:.0f} s)"
                    )
    clean = {d: statistics.mean(results["none"][d]) for d in ("off", "on")}
    rows = []
    for attack in args.attacks:
        row = {"attack": attack}
        for d in ("off", "on"):
            mean = statistics.mean(results[attack][d])
            row[f"rsum_{d}"] = round(mean, 1)
            row[f"vs_clean_{d}"] = round(100 * (mean / clean["on"] - 1), 1)
        row["within_10pct_with_defences"] = abs(row["vs_clean_on"]) <= 10
        rows.append(row)
    table = Table(
        title=f"1 hostile site ({HOSTILE}) of 6, cream+, digits, {args.rounds} rounds, seeds {args.seeds}"
    )
    for col in (
        "attack",
        "rsum, no defences",
        "% vs clean",
        "rsum, defences on",
        "% vs clean",
        "within 10 %",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(r["attack"], f"{r['rsum_off']:.1f}", f"{r['vs_clean_off']:+.1f}", f"{r['rsum_on']:.1f}", f"{r['vs_clean_on']:+.1f}", "yes" if r["within_10pct_with_defences"] else "NO")  # fmt: skip
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robustness.json").write_text(json.dumps({"seeds": args.seeds, "rounds": args.rounds, "hostile": HOSTILE, "clean_rsum": clean, "runs": results, "rows": rows}, indent=2))  # fmt: skip
    md = [
        f"1 hostile site ({HOSTILE}) of 6; cream+ on digits, {args.rounds} rounds, seeds {args.seeds}; "
        "% against the clean run with defences on.",
        "",
        "| attack | rsum, no defences | % | rsum, defences on | % | within 10 % |",
        "|---|---|---|---|---|---|",
    ]
    md += [f"| {r['attack']} | {r['rsum_off']:.1f} | {r['vs_clean_off']:+.1f} | {r['rsum_on']:.1f} | {r['vs_clean_on']:+.1f} | {'yes' if r['within_10pct_with_defences'] else 'NO'} |" for r in rows]  # fmt: skip
    (RESULTS / "robustness.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
