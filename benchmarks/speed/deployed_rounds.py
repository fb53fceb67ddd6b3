"""Deployed round time against Flower's simulation engine and the in-process engine (issue 14).

The same federation four ways: deployed (daemon, nginx with TLS, SuperNode authentication, one
agent per site on loopback) with the warm ClientApp launcher and with Flower's own launcher (a
fresh ``flwr-clientapp`` process per message), and simulated with ``--engine flower`` and
``--engine inprocess``. Three sites (image-only, text-only, paired) hold the digits pool split
as the deployment tests split it; the run spec is the deployment tests' (``cream``, 200 public
rows a round). Per round: wall time and its phases (server training, encoding the public rows,
the exchange with the sites — send, site work, receive —, merging, distillation, evaluation)
and the sites' own training time.

    python benchmarks/speed/deployed_rounds.py --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
sys.path.insert(0, str(HERE.parent / "tests"))

from deploy_helpers import RUN_SPEC, SITES, Federation, start_federation, wait_for  # noqa: E402
from gpu_round import PHASES  # noqa: E402

RESULTS = HERE / "results"


def rounds_of(summary: Path) -> list[dict]:
    rows = json.loads(summary.read_text())["rounds"]
    return [
        {
            "round": r["round"],
            "status": r["status"],
            "wall_seconds": r["wall_seconds"],
            "phase_seconds": r.get("phase_seconds", {}),
            "site_train_seconds": max(
                (s["metrics"].get("train_seconds", 0.0) for s in r["sites"] if s["accepted"]), default=0.0
            ),
            "sites_accepted": sum(s["accepted"] for s in r["sites"]),
        }
        for r in rows
    ]


def deployed(root: Path, launcher: str, rounds: int) -> list[dict]:
    # Three sites and the coordinator share the machine: one torch thread per site, as one
    # simulated site gets one CPU (more would oversubscribe the cores and spin in OpenMP).
    with contextlib.contextmanager(start_federation)(root, SITES, launcher, ("--threads", "1")) as fed:
        fed: Federation
        wait_for(
            "three sites online",
            lambda: sum(s["status"] == "online" for s in fed.status()["sites"]) == 3,
            180,
        )
        run_id = fed.submit(rounds)
        wait_for(f"the {rounds}-round run", lambda: fed.summary(run_id).exists(), 1800)
        return rounds_of(fed.summary(run_id))


def simulated(root: Path, partition: Path, engine: str, rounds: int) -> list[dict]:
    sites = ", ".join(
        f'{{id = "{s}", modalities = {json.dumps(m)}, manifest = "{partition / "sites" / s / "data.jsonl"}", '
        f"architectures = {{{', '.join(f'{x} = ' + json.dumps('mlp' if x == 'image' else 'bag') for x in m)}}}}}"
        for s, m in SITES.items()
    )
    spec = root / f"sim-{engine}.toml"
    spec.write_text(
        RUN_SPEC.format(rounds=rounds, round_timeout=600).replace("sites = []", f"sites = [{sites}]")
    )
    out = root / f"sim-{engine}"
    done = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "--config", str(spec), "--engine", engine,
         "--out", str(out), "--no-controls"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"simulate --engine {engine} failed: {done.stderr[-2000:]}")
    return rounds_of(out / "summary.json")


def steady(rows: list[dict]) -> float:
    """Mean wall time of the rounds after the first (the first pays the start-up)."""
    later = [r["wall_seconds"] for r in rows[1:]] or [rows[0]["wall_seconds"]]
    return statistics.fmean(later)


def table(results: dict[str, list[dict]]) -> str:
    base = steady(results["simulation (flower engine)"])
    lines = [
        "| how the round ran | round 1 s | later rounds s (mean) | × flower simulation | "
        + " | ".join(f"{p} s" for p in PHASES)
        + " | site training s |",
        "|---" * (5 + len(PHASES)) + "|",
    ]
    for name, rows in results.items():
        later = rows[1:] or rows
        phase = [statistics.fmean(r["phase_seconds"].get(p, 0.0) for r in later) for p in PHASES]
        site = statistics.fmean(r["site_train_seconds"] for r in later)
        lines.append(
            f"| {name} | {rows[0]['wall_seconds']:.1f} | {steady(rows):.1f} | {steady(rows) / base:.2f} | "
            + " | ".join(f"{p:.2f}" for p in phase)
            + f" | {site:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--launchers", nargs="+", default=["warm", "flower"])
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from mmfl.data.builtin import prepare

    prepare("digits")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mmfl-deployed-") as tmp:
        root = Path(tmp)
        for launcher in args.launchers:
            print(f"deployed, {launcher} launcher ...", flush=True)
            results[f"deployed, {launcher} launcher"] = deployed(root / launcher, launcher, args.rounds)
        partition = root / args.launchers[0] / "partition"
        for engine, name in (("flower", "simulation (flower engine)"), ("inprocess", "in-process")):
            print(f"{name} ...", flush=True)
            results[name] = simulated(root, partition, engine, args.rounds)
    report = table(results)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deployed_rounds.json").write_text(
        json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(), "results": results}, indent=2)
    )
    (RESULTS / "deployed_rounds.md").write_text(
        f"# Deployed rounds against simulation ({args.rounds} rounds, {os.cpu_count()} CPUs)\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
