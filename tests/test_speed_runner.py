"""``benchmarks/speed/speed.py`` names every speed benchmark by a script that exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

BENCHMARKS = Path(__file__).parents[1] / "benchmarks" / "speed"


def test_every_speed_benchmark_is_a_script_and_unknown_names_are_refused() -> None:
    speed = load_benchmark("speed")
    todo = speed.commands()
    assert [Path(c[1]).stem for c in todo] == list(speed.BENCHMARKS)
    assert all(Path(c[1]).is_file() for c in todo)
    assert {
        "overhead",
        "deployed_rounds",
        "deployed_sites",
        "many_sites",
        "payload",
        "hot_paths",
        "gpu_round",
    } <= set(speed.BENCHMARKS)
    assert [Path(c[1]).stem for c in speed.commands(["gpu_round", "overhead"])] == ["overhead", "gpu_round"]
    with pytest.raises(SystemExit, match=r"unknown benchmark nope \(known: overhead"):
        speed.commands(["nope"])


def test_a_dry_run_prints_each_command_and_runs_none() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed.py"), "--dry-run", "--only", "deployed_sites"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "deployed_sites.py --sites 3,6,12 --rounds 4" in done.stdout and "overhead" not in done.stdout
