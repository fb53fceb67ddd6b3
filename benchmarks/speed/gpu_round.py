"""A round on a GPU against the same round on the CPU (issue 14).

Runs one federation spec (the default: ``mmfl simulate``'s own, digits, ``regress``) through
``mmfl simulate --engine inprocess`` twice: once as it runs on the machine — the server and every
site (``device = "auto"``) on the first CUDA GPU — and once with ``CUDA_VISIBLE_DEVICES=""``, the
same spec on the CPU. Per round: wall time and the phases the run records itself; the final test
rsum of both (they differ in the last digits: CUDA kernels sum in another order). Writes
``results/gpu_round.{json,md}`` with the GPU's name.

Without a CUDA GPU it says so and exits 0, writing nothing (``--device cpu`` runs the CPU leg
alone, to check the benchmark itself on any machine).

    python benchmarks/speed/gpu_round.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
PHASES = ("server-train", "encode", "exchange", "merge", "distil", "evaluate")


def cuda_name() -> str | None:
    """The first CUDA GPU's name, or None when torch sees none."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_leg(out: Path, device: str, rounds: int, config: Path | None, threads: int) -> dict[str, Any]:
    """``mmfl simulate`` on ``device`` (``cuda``: as the machine is; ``cpu``: CUDA hidden)."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", "mmfl.cli", "simulate", "--engine", "inprocess", "--no-controls",
               "--out", str(out), "--set", f"rounds={rounds}"]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"simulate on {device} failed: {done.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / "summary.json").read_text())
    rounds_rows = summary["rounds"]
    later = rounds_rows[1:] or rounds_rows
    return {
        "device": device,
        "site_devices": sorted({s["device"]["kind"] for s in summary["sites"]}),
        "round_seconds": [r["wall_seconds"] for r in rounds_rows],
        "later_round_mean_seconds": statistics.fmean(r["wall_seconds"] for r in later),
        "phase_seconds": {
            p: statistics.fmean(r.get("phase_seconds", {}).get(p, 0.0) for r in later) for p in PHASES
        },
        "test_rsum": summary["final"]["retrieval"]["rsum"],
        "wall_seconds": summary["wall_seconds"],
    }


def table(legs: list[dict[str, Any]]) -> str:
    lines = [
        "| device | sites on | round 1 s | later rounds s (mean) | "
        + " | ".join(f"{p} s" for p in PHASES)
        + " | test rsum |",
        "|---" * (5 + len(PHASES)) + "|",
    ]
    for leg in legs:
        lines.append(
            f"| {leg['device']} | {', '.join(leg['site_devices'])} | {leg['round_seconds'][0]:.2f} | "
            f"{leg['later_round_mean_seconds']:.2f} | "
            + " | ".join(f"{leg['phase_seconds'][p]:.2f}" for p in PHASES)
            + f" | {leg['test_rsum']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--config", type=Path, default=None, help="a federation spec; default: the demo's")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the GPU leg and the CPU leg beside it; cpu: the CPU leg alone")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of each leg")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_round")
    args = parser.parse_args()
    gpu = cuda_name()
    if args.device == "cuda" and gpu is None:
        print("gpu_round: no CUDA GPU on this machine (torch.cuda.is_available() is False); skipped")
        return
    legs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mmfl-gpu-round-") as tmp:
        for device in ["cuda", "cpu"] if args.device == "cuda" else ["cpu"]:
            print(f"{device} ...", flush=True)
            legs.append(run_leg(Path(tmp) / device, device, args.rounds, args.config, args.threads))
    report = table(legs)
    print(report)
    record = {"gpu": gpu if args.device == "cuda" else None, "cpus": os.cpu_count(), "rounds": args.rounds,
              "config": str(args.config) if args.config else "default", "legs": legs}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    title = f"on {gpu}" if record["gpu"] else "CPU leg only (no GPU)"
    args.out.with_suffix(".md").write_text(
        f"# A round {title} ({args.rounds} rounds, {os.cpu_count()} CPUs)\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
