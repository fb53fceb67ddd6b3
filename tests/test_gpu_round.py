"""``benchmarks/speed/gpu_round.py``: skips cleanly without a GPU; its CPU leg times a real round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "speed" / "gpu_round.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # this test checks the no-GPU behaviour everywhere
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path: Path, mmfl_home: Path) -> None:
    done = _run("--out", str(tmp_path / "gpu"))
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU on this machine" in done.stdout and "skipped" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_cpu_leg_times_every_round_of_a_real_run(tmp_path: Path, digits) -> None:
    done = _run("--device", "cpu", "--rounds", "2", "--threads", "1", "--out", str(tmp_path / "gpu"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["gpu"] is None and record["rounds"] == 2
    (leg,) = record["legs"]
    assert leg["device"] == "cpu" and leg["site_devices"] == ["cpu"]
    assert len(leg["round_seconds"]) == 2 and all(s > 0 for s in leg["round_seconds"])
    assert leg["phase_seconds"]["exchange"] > 0 and leg["phase_seconds"]["distil"] > 0
    # the default federation (digits, regress) learns: far above chance (rsum 6 x 10 of 600 at random)
    assert leg["test_rsum"] > 300
    assert "CPU leg only" in (tmp_path / "gpu.md").read_text()


def test_a_site_takes_the_gpu_only_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mmfl.client.site import choose_device
    from mmfl.errors import MmflError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device("cpu") == torch.device("cpu")
    with pytest.raises(MmflError, match=r"device cuda:1 requested but this machine has no CUDA GPU"):
        choose_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")
