"""Issue 14: a simulation on an existing Ray cluster through Flower's engine — a Ray head and a
worker node started here on loopback, ``mmfl simulate --ray-address`` sending the sites there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmfl.flower_runtime import interpreter_bin
from mmfl.ports import free_port

SPEC = """\
name = "on-ray"
strategy = "cream"
rounds = 1
sites = [
  {id = "img", modalities = ["image"], architectures = {image = "mlp"}},
  {id = "pair", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}},
]

[train]
local_epochs = 1

[server]
epochs_per_round = 1

[cream]
public_subset = 100
"""


def ray_node(*args: str, temp: Path) -> subprocess.Popen:
    """``ray start --block``: the node lives as long as this process (its own group)."""
    return subprocess.Popen(
        [str(interpreter_bin() / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         f"--temp-dir={temp}", "--disable-usage-stats", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
    )  # fmt: skip


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive_nodes(address: str, wanted: int, deadline: float) -> int:
    """Alive nodes of the cluster once ``wanted`` are (one client, polling), or at the deadline."""
    script = (
        "import sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {wanted} and time.time() < {time.time() + deadline - time.monotonic()}:\n"
        "    time.sleep(0.5)\n"
        "print(sum(n['Alive'] for n in ray.nodes()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_simulate_sends_the_sites_to_an_existing_ray_cluster(digits, tmp_path: Path) -> None:
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_node("--head", f"--port={port}", "--include-dashboard=false", temp=temp)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):  # the head's GCS listens
            assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not start"
            time.sleep(0.5)
        worker = ray_node(f"--address={address}", temp=temp)
        assert alive_nodes(address, 2, deadline) == 2, "the Ray worker did not join the head"
        (tmp_path / "spec.toml").write_text(SPEC)
        out = tmp_path / "run"
        done = subprocess.run(
            [sys.executable, "-m", "mmfl.cli", "simulate", "--config", str(tmp_path / "spec.toml"),
             "--engine", "flower", "--ray-address", address, "--out", str(out), "--no-controls"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert [r["status"] for r in summary["rounds"]] == ["completed"]
        assert sum(s["accepted"] for s in summary["rounds"][0]["sites"]) == 2
        # The sites ran as Flower's ClientApp actors in this cluster's workers (a Ray started
        # by the engine itself would log under /tmp/ray, not under this cluster's folder).
        logs = list(temp.glob("session_*/logs/worker-*.out"))
        actors = [p for p in logs if ":actor_name:ClientAppActor" in p.read_text(errors="replace")]
        assert actors, f"no ClientAppActor among {len(logs)} worker logs of the cluster"
    finally:
        for proc in (worker, head):
            if proc is not None:
                stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_address_needs_flowers_engine(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "--engine", "inprocess", "--ray-address", "127.0.0.1:1",
         "--out", str(tmp_path / "run"), "--no-controls"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mmfl: error: --ray-address runs on Flower's simulation engine: use --engine flower"
    ]
