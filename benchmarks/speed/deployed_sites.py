"""Sites per coordinator: deployed round time and memory as the federation grows (issue 14).

The deployment of ``deployed_rounds.py`` (daemon, nginx with TLS, SuperNode authentication, one
agent per site on loopback, the warm ClientApp launcher, one torch thread per site) with 3, 6,
12 ... sites of the three kinds in turn (image-only, text-only, paired), the digits pool split
across them. During the first round, every 0.5 s, the benchmark sums the proportional set size
(PSS: shared pages split between their users) of the daemon's process tree (SuperLink,
ServerApp, nginx) and of every agent's (SuperNode, launcher and its forks), and keeps the peak
of the coordinator, of the sites and of the total; per site is the sites' peak divided by their
number. The later rounds are timed, unsampled.

    python benchmarks/speed/deployed_sites.py --sites 3,6,12 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
sys.path.insert(0, str(HERE.parent / "tests"))

from deploy_helpers import Federation, start_federation, wait_for  # noqa: E402
from deployed_rounds import rounds_of  # noqa: E402
from many_sites import tree_pss_mib  # noqa: E402

RESULTS = HERE / "results"
KINDS = (("img", ["image"]), ("txt", ["text"]), ("pair", ["image", "text"]))


def sites_of(n: int) -> dict[str, list[str]]:
    """``n`` sites, the three kinds in turn: img1, txt1, pair1, img2, ..."""
    return {f"{KINDS[i % 3][0]}{i // 3 + 1}": KINDS[i % 3][1] for i in range(n)}


class PeakMemory:
    """Samples the PSS of the federation's processes every ``interval`` s until ``done()``: the
    coordinator's tree and the sites' trees summed; keeps the peak of each and of their total.

    Reading PSS walks each process's page tables under its memory-map lock (0.2 s of CPU for 30
    processes) and stalls a fork meanwhile: sampled through a whole run, three sites' rounds took
    6–11 s instead of 2. So the benchmark samples during the first round only and times the
    later ones."""

    def __init__(self, fed: Federation, root: Path, done: Callable[[], bool], interval: float = 0.5) -> None:
        self.fed, self.root, self.done, self.interval = fed, root, done, interval
        self.peak = {"total": 0.0, "coordinator": 0.0, "sites": 0.0}
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def agents(self) -> list[int]:
        pids = []
        for pid_file in self.root.glob("state-*/agent.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text()))
        return pids

    def now(self) -> dict[str, float]:
        coordinator, n = tree_pss_mib(self.fed.daemon_pid() or 0)
        sites = 0.0
        for pid in self.agents():
            mib, k = tree_pss_mib(pid)
            sites, n = sites + mib, n + k
        return {"total": coordinator + sites, "coordinator": coordinator, "sites": sites, "processes": n}

    def _sample(self) -> None:
        while not self._stop.is_set() and not self.done():
            got = self.now()
            if got["total"] > self.peak["total"]:
                self.processes = int(got["processes"])
            for key in self.peak:
                self.peak[key] = max(self.peak[key], got[key])
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def second_round_started(fed: Federation, run_id: str) -> bool:
    """Whether the run's progress file records the start of round 2 (the sampled round is over)."""
    try:
        lines = (fed.server / "runs" / run_id / "rounds.jsonl").read_text().splitlines()
    except OSError:
        return False
    return any('"round-start"' in line and json.loads(line).get("round") == 2 for line in lines)


def one_size(root: Path, n: int, rounds: int) -> dict:
    sites = sites_of(n)
    started = time.perf_counter()
    with contextlib.contextmanager(start_federation)(root, sites, "warm", ("--threads", "1")) as fed:
        fed: Federation
        wait_for(
            f"{n} sites online",
            lambda: sum(s["status"] == "online" for s in fed.status()["sites"]) == n,
            120 + 30 * n,
        )
        online_after = time.perf_counter() - started
        run_id: list[str] = []
        with PeakMemory(fed, root, lambda: bool(run_id) and second_round_started(fed, run_id[0])) as memory:
            idle = memory.now()
            run_id.append(fed.submit(rounds))
            wait_for(f"the {rounds}-round run", lambda: fed.summary(run_id[0]).exists(), 600 + 120 * n)
        rows = rounds_of(fed.summary(run_id[0]))
    later = rows[1:] or rows
    return {
        "sites": n,
        "online_after_seconds": online_after,
        "round_seconds": [r["wall_seconds"] for r in rows],
        "later_round_mean_seconds": statistics.fmean(r["wall_seconds"] for r in later),
        "exchange_mean_seconds": statistics.fmean(r["phase_seconds"].get("exchange", 0.0) for r in later),
        "sites_accepted": [r["sites_accepted"] for r in rows],
        "idle_mib": {k: v for k, v in idle.items() if k != "processes"},
        "peak_mib": memory.peak,
        "peak_processes": memory.processes,
        "per_site_peak_mib": memory.peak["sites"] / n,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| sites | online after s | later rounds s (mean) | later rounds s (median) | exchange s | sites answering | "
        "peak PSS MiB, all (processes) | coordinator | sites | per site | idle, all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['sites']} | {r['online_after_seconds']:.0f} | {r['later_round_mean_seconds']:.1f} | "
            f"{statistics.median(r['round_seconds'][1:] or r['round_seconds']):.1f} | "
            f"{r['exchange_mean_seconds']:.1f} | {min(r['sites_accepted'])}–{max(r['sites_accepted'])} | "
            f"{r['peak_mib']['total']:.0f} ({r['peak_processes']}) | {r['peak_mib']['coordinator']:.0f} | "
            f"{r['peak_mib']['sites']:.0f} | {r['per_site_peak_mib']:.0f} | {r['idle_mib']['total']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="3,6,12", help="federation sizes, comma-separated")
    parser.add_argument(
        "--rounds", type=int, default=4, help="the first is sampled for memory, the rest timed"
    )
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from mmfl.data.builtin import prepare

    prepare("digits")
    results = []
    with tempfile.TemporaryDirectory(prefix="mmfl-deployed-sites-") as tmp:
        for n in (int(s) for s in args.sites.split(",")):
            print(f"{n} sites ...", flush=True)
            results.append(one_size(Path(tmp) / f"n{n}", n, args.rounds))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    report = table(results)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deployed_sites.json").write_text(
        json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(), "results": results}, indent=2)
    )
    (RESULTS / "deployed_sites.md").write_text(
        f"# Sites per coordinator, deployed ({args.rounds} rounds, {os.cpu_count()} CPUs)\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
