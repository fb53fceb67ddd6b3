"""Hot paths of the default simulation (issue 14, item 6): where the time goes, profiled.

Runs the default federation (``mmfl simulate``'s spec: digits, six sites, the in-process engine,
no controls; ``--strategy`` regress, the default, or cream+, profiled first) once and reports

* the run's own clocks per phase (``phase_seconds`` of every round, summed; the sites work in
  the in-process grid's threads, so their time is the server's wait, ``exchange``), and
* inside them, from pyinstrument (a sampling profiler of the main thread), the seconds under
  chosen frames: Adam's step and autograd's backward in the server, manifest loading, tensors.

    python benchmarks/speed/hot_paths.py --label before   # at the code before a fix
    python benchmarks/speed/hot_paths.py --label after    # after it; both land in results/hot_paths.*
    python benchmarks/speed/hot_paths.py --label before --strategy cream+   # the first profiles' strategy

Each label is one run at the checked-out code (its commit is recorded); the table puts the runs
side by side. On a shared machine compare CPU seconds as well as wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pyinstrument import Profiler
from pyinstrument.frame import Frame

from mmfl.config import FederationSpec, load_config
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Phases of a round are the run's own clocks (``phase_seconds`` of every round, summed): the
# sites work in the in-process grid's threads, so their time is the server's wait, "exchange".
# Inside the server's phases the profiler (main thread) splits out these frames:
FRAMES: dict[str, tuple[str, str]] = {
    "Adam steps (server)": ("step", "torch/optim/adam.py"),
    "backward (server)": ("backward", "torch/autograd/__init__.py"),
    "load manifests": ("load_manifest", "data/manifest.py"),
    "featurize / load tensors": ("load_tensors", "data/tensors.py"),
}


def frame_seconds(root: Frame) -> dict[str, float]:
    """Seconds under each of :data:`FRAMES` (outermost occurrence; the main thread only)."""
    out = dict.fromkeys(FRAMES, 0.0)

    def walk(frame: Frame, inside: frozenset[str]) -> None:
        now = set(inside)
        for name, (function, suffix) in FRAMES.items():
            if name not in inside and frame.function == function and (frame.file_path or "").endswith(suffix):
                out[name] += frame.time
                now.add(name)
        for child in frame.children:
            walk(child, frozenset(now))

    walk(root, frozenset())
    return out


def profile(rounds: int, strategy: str) -> dict[str, Any]:
    """One profiled run of the default federation: phase and frame seconds, wall and CPU time."""
    spec = load_config(
        FederationSpec, overrides=[f"rounds={rounds}", f'strategy="{strategy}"', "delivery.select=false"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        profiler = Profiler(interval=0.005)
        profiler.start()
        plan = build_plan(spec, Path(tmp) / "run")
        summary = json.loads(run_inprocess(plan).to_json())
        profiler.stop()
        wall = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    phases: dict[str, float] = {}
    for row in summary["rounds"]:
        for name, seconds in (row.get("phase_seconds") or {}).items():
            phases[name] = phases.get(name, 0.0) + seconds
    phases["outside rounds (plan, sites, start-up)"] = wall - sum(
        r["wall_seconds"] for r in summary["rounds"]
    )
    session = profiler.last_session
    frames = frame_seconds(session.root_frame()) if session is not None and session.root_frame() else {}
    return {
        "wall_seconds": wall,
        "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "phases": phases,
        "frames": frames,
        "final_test_rsum": summary["rounds"][-1]["server_metrics"]["test"].get("rsum"),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }


def table(runs: list[dict[str, Any]]) -> str:
    labels = [f"{r['label']}, {r.get('strategy', 'cream+')} ({r['commit'][:7]})" for r in runs]
    lines = ["| phase | " + " | ".join(labels) + " |", "|---|" + "---|" * len(runs)]
    for group in ("phases", "frames"):
        for name in dict.fromkeys(n for r in runs for n in r["profile"][group]):
            cells = [f"{r['profile'][group].get(name, 0.0):.1f}" for r in runs]
            prefix = "" if group == "phases" else "of which: "
            lines.append(f"| {prefix}{name} | " + " | ".join(cells) + " |")
    for key, fmt in (("wall_seconds", "{:.1f}"), ("cpu_seconds", "{:.1f}"), ("final_test_rsum", "{:.1f}")):
        lines.append(
            f"| **{key.replace('_', ' ')}** | "
            + " | ".join(fmt.format(r["profile"][key]) for r in runs)
            + " |"
        )
    lines.append(
        "| load average at the end | "
        + " | ".join(f"{r['profile']['load_average']:.1f}" for r in runs)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--strategy", default="regress", help="regress (the default's) or cream+")
    parser.add_argument("--out", type=Path, default=RESULTS / "hot_paths")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    )
    run = {
        "label": args.label,
        "strategy": args.strategy,
        "commit": commit + ("+changes" if dirty else ""),
        "profile": profile(args.rounds, args.strategy),
    }
    path = args.out.with_suffix(".json")
    runs = [
        r
        for r in (json.loads(path.read_text()) if path.exists() else [])
        if (r["label"], r.get("strategy", "cream+")) != (args.label, args.strategy)
    ]
    runs.append(run)
    path.write_text(json.dumps(runs, indent=1))
    md = table(runs)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
