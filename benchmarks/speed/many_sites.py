"""Many sites: 100 virtual sites, 10 sampled per round, on Flower's simulation engine and
in-process (issue 14).

The digits private pool (2,500 rows) split over 100 sites of the default federation's six kinds
(about 25 rows each); ``cream``, ``cream.sites_per_round = 10``. Each run is a child process;
every 0.5 s the benchmark sums the proportional set size (PSS, shared pages split between
their users) of that process and all its descendants — the SuperLink, the simulation process,
Ray's GCS, raylet and every worker — and keeps the peak. A site's model lives in its state
folder between rounds (``STATE/models``); only the sites of the current round are in memory.

    python benchmarks/speed/many_sites.py --sites 100 --per-round 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
KINDS = [
    ('["image"]', '{image = "cnn-small"}'),
    ('["image"]', '{image = "mlp"}'),
    ('["text"]', '{text = "bag"}'),
    ('["text"]', '{text = "glove-mlp"}'),
    ('["image", "text"]', '{image = "cnn-small", text = "bag"}'),
    ('["image", "text"]', '{image = "mlp", text = "glove-mlp"}'),
]


def spec_text(sites: int, per_round: int, rounds: int) -> str:
    rows = ",\n  ".join(
        f'{{id = "s{i:03d}", modalities = {KINDS[i % 6][0]}, architectures = {KINDS[i % 6][1]}}}'
        for i in range(sites)
    )
    return (
        f'name = "many-sites"\nstrategy = "cream"\nrounds = {rounds}\nsites = [\n  {rows},\n]\n\n'
        f"[cream]\nsites_per_round = {per_round}\n"
    )


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pss_mib(root: int) -> tuple[float, int]:
    """(PSS of ``root`` and its descendants in MiB, how many processes)."""
    tree, todo, total, count = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
    return total / 1024, count


def measured(command: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"pss_mib": 0.0, "processes": 0}

    def sample() -> None:
        while proc.poll() is None:
            pss, n = tree_pss_mib(proc.pid)
            if pss > peak["pss_mib"]:
                peak.update(pss_mib=pss, processes=n)
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = proc.communicate(timeout=7200)
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} failed: {err[-2000:]}")
    return {"seconds": time.perf_counter() - started, **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mmfl-many-") as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(spec_text(args.sites, args.per_round, args.rounds))
        for engine in ("flower", "inprocess"):
            out = Path(tmp) / engine
            print(f"{engine} ...", flush=True)
            got = measured(
                [sys.executable, "-m", "mmfl.cli", "simulate", "--config", str(spec), "--engine", engine,
                 "--out", str(out), "--no-controls"]
            )  # fmt: skip
            summary = json.loads((out / "summary.json").read_text())
            rounds = summary["rounds"]
            got.update(
                run_seconds=summary["wall_seconds"],
                round_seconds=[r["wall_seconds"] for r in rounds],
                sites_per_round=[sum(s["accepted"] for s in r["sites"]) for r in rounds],
                distinct_sites=len({s["site_id"] for r in rounds for s in r["sites"]}),
                test_rsum=summary["final"]["retrieval"]["rsum"],
                models_on_disk=len(list(out.glob("sites/*/state/models/**/*.safetensors")))
                + len(list(out.glob("sites/*/state/models/**/*.pt"))),
            )
            results[engine] = got
    lines = [
        "| engine | total s | run s | s per round | sites per round | distinct sites | peak PSS MiB (processes) | test rsum |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for engine, r in results.items():
        lines.append(
            f"| {engine} | {r['seconds']:.0f} | {r['run_seconds']:.0f} | "
            f"{', '.join(f'{s:.1f}' for s in r['round_seconds'])} | {r['sites_per_round']} | "
            f"{r['distinct_sites']} | {r['pss_mib']:.0f} ({r['processes']}) | {r['test_rsum']:.1f} |"
        )
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_sites.json").write_text(
        json.dumps({**vars(args), "cpus": os.cpu_count(), "results": results}, indent=2)
    )
    (RESULTS / "many_sites.md").write_text(
        f"# {args.sites} sites, {args.per_round} per round, {args.rounds} rounds ({os.cpu_count()} CPUs)\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
