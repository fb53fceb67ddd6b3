"""Pinned numbers: what a seed gives for every method, so that a restructuring cannot move them.

``python tests/pinning.py`` (with ``MMFL_HOME`` set) re-runs every case and rewrites
``tests/pinned/*.json``; ``test_pinned.py`` runs the same cases and compares within 1e-6.
Only do the former when a change is meant to move numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SMALL  # noqa: E402

PINNED = Path(__file__).parent / "pinned"
TOLERANCE = 1e-6

DIGITS_METHODS = [
    "cream",
    "cream+",
    "mean",
    "fedavg",
    "fedavg-public",
    "fedprox",
    "fedavgm",
    "local",
    "server-only",
    "centralized",
    "site-free",
    "public-teachers",
    "regress",
]
OPENCLIPART_METHODS = ["cream+", "centralized"]
# The benchmark's openclipart federation on every SLICE-th row of each split (the frozen
# encoders' features of the whole set take minutes on a CPU), two rounds, a public subset.
OPENCLIPART = ["rounds=2", "train.local_epochs=1", "cream.public_subset=512"]
SLICE = 8

VOLATILE = {"train_seconds", "wall_seconds", "phase_seconds"}


def openclipart_slice(folder: Path) -> Path:
    """A prepared copy of openclipart holding every :data:`SLICE`-th row of each split (the
    files stay where the prepared set points)."""
    from mmfl.data.builtin import open_dataset

    source = open_dataset("openclipart").root
    if (folder / "dataset.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    info = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    for split in info["splits"]:
        rows = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[::SLICE]
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        info["splits"][split] = len(rows)
    (folder / "dataset.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return folder


def case_spec(dataset: str, method: str, work: Path):  # noqa: ANN201
    from mmfl.config import FederationSpec, load_config

    if dataset == "digits":
        return load_config(FederationSpec, overrides=[*SMALL, f'strategy="{method}"'])
    spec_file = Path(__file__).parents[1] / "benchmarks" / "specs" / "openclipart.toml"
    data = openclipart_slice(work / "openclipart-slice")
    return load_config(
        FederationSpec, spec_file, overrides=[*OPENCLIPART, f'strategy="{method}"', f'data_dir="{data}"']
    )


def numbers(summary: dict[str, Any]) -> dict[str, float | str | None]:
    """Every metric of a summary, flattened: per round the server's and each site's, and the
    final ones. Times are left out; they differ from run to run by nature."""
    out: dict[str, float | str | None] = {}

    def put(prefix: str, metrics: dict[str, Any] | None) -> None:
        for key, value in (metrics or {}).items():
            if key in VOLATILE:
                continue
            if isinstance(value, dict):
                put(f"{prefix}/{key}", value)
            else:
                out[f"{prefix}/{key}"] = value

    for rec in summary["rounds"]:
        r = rec["round"]
        out[f"round{r}/status"] = rec["status"]
        put(f"round{r}/server", rec["server_metrics"])
        for site in rec["sites"]:
            out[f"round{r}/{site['site_id']}/accepted"] = float(site["accepted"])
            put(f"round{r}/{site['site_id']}", site["metrics"])
    final = summary["final"]
    put("final/test", final.get("retrieval"))
    put("final/val", final.get("val_retrieval"))
    put("final/sites", final.get("site_metrics"))
    return out


def run_case(dataset: str, method: str, out: Path) -> dict[str, float | str | None]:
    from mmfl.simulation.engines import run_inprocess
    from mmfl.simulation.plan import build_plan

    plan = build_plan(case_spec(dataset, method, out.parent), out, force=True)
    return numbers(run_inprocess(plan))


def differences(pinned: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Keys whose values differ by more than :data:`TOLERANCE` (or exist on one side only)."""
    bad = [f"missing {k}" for k in pinned if k not in got] + [f"new {k}" for k in got if k not in pinned]
    for key in pinned.keys() & got.keys():
        a, b = pinned[key], got[key]
        if isinstance(a, float) and isinstance(b, float):
            same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE
        else:
            same = a == b
        if not same:
            bad.append(f"{key}: pinned {a!r}, now {b!r}")
    return sorted(bad)


def cases() -> list[tuple[str, str]]:
    return [("digits", m) for m in DIGITS_METHODS] + [("openclipart", m) for m in OPENCLIPART_METHODS]


if __name__ == "__main__":
    import tempfile
    import time

    only = sys.argv[1:]
    PINNED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, method in cases():
            if only and dataset not in only and method not in only:
                continue
            t0 = time.perf_counter()
            got = run_case(dataset, method, Path(tmp) / f"{dataset}-{method}")
            path = PINNED / f"{dataset}-{method.replace('+', 'plus')}.json"
            path.write_text(json.dumps(got, indent=1, sort_keys=True, allow_nan=True) + "\n")
            print(f"{dataset} {method}: {len(got)} numbers in {time.perf_counter() - t0:.1f} s")
