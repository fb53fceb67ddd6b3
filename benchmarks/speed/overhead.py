"""Framework overhead: one federation through a plain loop, ``--engine inprocess`` and
``--engine flower`` (issue 14).

The plain loop is what a researcher's script would do with the same parts: build the sites, then
per round train the server, encode the public rows, call each site's ``represent`` directly
(no messages, no protocol records, no audit log), merge, distil and evaluate — mmfl's own
``RoundPipeline`` with the exchange replaced by direct calls, so the training and aggregation
are exactly the same (the final retrieval is checked equal). No run store, checkpoints or
progress file. ``inprocess`` adds all of mmfl's framework (Flower messages on an in-process
grid, protocol checks, audit log, run store, checkpoints, summary and evidence); ``flower`` runs
the same ServerApp and ClientApp on Flower's simulation engine (a local SuperLink, Ray), whose
fixed start-up is reported apart from the rounds.

    python benchmarks/speed/overhead.py --rounds 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mmfl.client.site import Site
from mmfl.config import FederationSpec, SiteConfig, load_config
from mmfl.protocols.messages import RepresentInstruction
from mmfl.protocols.records import from_wire
from mmfl.server.loop import FederatedRun
from mmfl.server.records import SiteReport
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan

RESULTS = Path(__file__).resolve().parents[1] / "results"
FIRST_NODE = 1000  # the in-process grid's node ids, so the sampler draws the same sites


class _AllOnline:
    def __init__(self, sites: Mapping[int, Site]) -> None:
        self.sites = dict(sites)

    def online(self, grid: object) -> list[int]:
        return sorted(self.sites)

    def site_id(self, node: int) -> str:
        return self.sites[node].spec.id


class DirectExchange:
    """The plain loop's exchange: ``Site.represent`` called in this process, arrays passed as
    they are (the same dtype conversions as on the wire). Two sites at a time with one torch
    thread each, as the in-process engine runs them, so that both compute the same numbers."""

    def __init__(self, sites: Mapping[int, Site], workers: int = 2) -> None:
        self.sites = dict(sites)
        self.grid = None
        self.registry = _AllOnline(self.sites)
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def _one(
        self, node: int, instruction: RepresentInstruction, globals_wire: Mapping[str, np.ndarray]
    ) -> dict:
        _, reps = self.sites[node].represent(instruction, dict(globals_wire))
        return {m: torch.from_numpy(from_wire(a)) for m, a in reps.items()}

    def represent(
        self, nodes: Sequence[int], instruction: RepresentInstruction, globals_wire: Mapping[str, np.ndarray]
    ) -> tuple[list[SiteReport], dict[int, dict[str, torch.Tensor]]]:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            futures = {n: self.pool.submit(self._one, n, instruction, globals_wire) for n in nodes}
            accepted = {n: f.result() for n, f in futures.items()}
        finally:
            torch.set_num_threads(before)
        reports = [SiteReport(site_id=self.sites[n].spec.id, node_id=n, accepted=True) for n in nodes]
        return reports, accepted


def plain_loop(spec: FederationSpec, out: Path) -> tuple[float, dict]:
    """(seconds, final retrieval) of the plain loop."""
    plan = build_plan(spec, out)
    started = time.perf_counter()
    configs = json.loads(Path(str(plan.site_configs)).read_text())
    sites = {FIRST_NODE + i: Site(SiteConfig.model_validate(c)) for i, c in enumerate(configs)}
    pipeline = FederatedRun(plan, grid=object())._pipeline()  # the run's own pipeline and server
    pipeline.exchange = DirectExchange(sites)  # type: ignore[assignment]
    for r in range(1, spec.rounds + 1):
        pipeline.run(r)
    final = pipeline.final()
    return time.perf_counter() - started, final


def inprocess(spec: FederationSpec, out: Path) -> tuple[float, dict]:
    plan = build_plan(spec, out)
    started = time.perf_counter()
    summary = json.loads(run_inprocess(plan).to_json())
    return time.perf_counter() - started, summary["final"]


def flower(spec_file: Path, rounds: int, out: Path) -> tuple[float, float]:
    """(total seconds of `mmfl simulate --engine flower`, the run's own wall time)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "--config", str(spec_file), "--engine", "flower",
         "--rounds", str(rounds), "--out", str(out), "--no-controls"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"simulate --engine flower failed: {done.stderr[-2000:]}")
    return total, json.loads((out / "summary.json").read_text())["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    spec = load_config(
        FederationSpec, overrides=[f"rounds={args.rounds}", 'strategy="cream"', "delivery.select=false"]
    )
    rows: dict[str, list[float]] = {
        "plain loop": [],
        "inprocess": [],
        "flower (total)": [],
        "flower (run)": [],
    }
    gaps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mmfl-overhead-") as tmp:
        root = Path(tmp)
        spec_file = root / "spec.toml"
        subprocess.run(
            [sys.executable, "-m", "mmfl.cli", "simulate", "init", "--set", f"rounds={args.rounds}",
             "--set", 'strategy="cream"'],
            check=True, stdout=spec_file.open("w"),
        )  # fmt: skip
        for k in range(args.repeats):  # interleaved, so drift in the machine hits all alike
            seconds, plain_final = plain_loop(spec, root / f"plain-{k}")
            rows["plain loop"].append(seconds)
            seconds, framework_final = inprocess(spec, root / f"inprocess-{k}")
            rows["inprocess"].append(seconds)
            a, b = plain_final["retrieval"], framework_final["retrieval"]
            gaps.append(max(abs(float(a[k]) - float(b[k])) for k in a))
            total, run = flower(spec_file, args.rounds, root / f"flower-{k}")
            rows["flower (total)"].append(total)
            rows["flower (run)"].append(run)
            print(f"repeat {k + 1}: " + ", ".join(f"{n} {v[-1]:.1f} s" for n, v in rows.items()), flush=True)
    base = statistics.median(rows["plain loop"])
    lines = [
        "| path | median s | runs s | × plain loop |",
        "|---|---|---|---|",
        *(
            f"| {name} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} | "
            f"{statistics.median(v) / base:.2f} |"
            for name, v in rows.items()
        ),
    ]
    startup = statistics.median(
        a - b for a, b in zip(rows["flower (total)"], rows["flower (run)"], strict=True)
    )
    report = (
        "\n".join(lines)
        + f"\n\nLargest difference of a final test retrieval metric between the plain loop and "
        f"`inprocess`: {max(gaps):.3g} (both run the sites two at a time with one torch thread each). "
        f"Flower's engine: {startup:.1f} s of fixed start-up (SuperLink, Ray, processes) outside its run."
    )
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "seconds": rows,
                "largest_metric_gap": max(gaps),
                "flower_startup_seconds": startup,
            },
            indent=2,
        )  # fmt: skip
    )
    (RESULTS / "overhead.md").write_text(
        f"# Framework overhead (default digits federation, `cream`, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs)\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
