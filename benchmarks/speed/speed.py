"""Every speed and scale benchmark of issue 14, one after another: ``python benchmarks/speed/speed.py``.

Each is its own script (run it alone to repeat one) and writes ``benchmarks/results/<name>.json``
and ``.md``; docs/benchmarks.md quotes those tables. On 2 cores the whole set takes
a few hours (the many-sites and aggregation runs most of it). ``--only`` picks some by name;
``--dry-run`` prints the commands.

    python benchmarks/speed/speed.py --only overhead,deployed_rounds,deployed_sites
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/

# name -> the script's arguments, as docs/benchmarks.md quotes them
BENCHMARKS: dict[str, list[str]] = {
    "overhead": ["--rounds", "3", "--repeats", "3"],
    "hot_paths": ["--label", "latest"],
    "deployed_rounds": ["--rounds", "4"],
    "deployed_sites": ["--sites", "3,6,12", "--rounds", "4"],
    "many_sites": ["--sites", "100", "--per-round", "10", "--rounds", "3"],
    "payload": [],
    "aggregation": [],
    "gpu_round": ["--rounds", "4"],
}


def commands(only: list[str] | None = None) -> list[list[str]]:
    """The command of each benchmark named in ``only`` (all by default), in the order above."""
    unknown = sorted(set(only or []) - BENCHMARKS.keys())
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    names = [n for n in BENCHMARKS if not only or n in only]
    return [[sys.executable, str(Path(__file__).resolve().parent / f"{n}.py"), *BENCHMARKS[n]] for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names; default: all")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    console = Console()
    todo = commands([n for n in args.only.split(",") if n] or None)
    failed = []
    for i, command in enumerate(todo, 1):
        name = Path(command[1]).stem
        console.rule(f"[{i}/{len(todo)}] {name}")
        print(" ".join(command[1:]), flush=True)  # not wrapped: it is a command to copy
        if args.dry_run:
            continue
        started = time.perf_counter()
        if subprocess.run(command).returncode != 0:
            failed.append(name)
        console.print(f"{name}: {time.perf_counter() - started:.0f} s")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
