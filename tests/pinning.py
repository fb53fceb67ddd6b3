"""Pinned numbers: what a seed gives for every method, so that a restructuring cannot move them.

``python tests/pinning.py`` (with ``MMFL_HOME`` set) re-runs every case and rewrites
``tests/pinned/*.json``; ``test_pinned_*.py`` run the same cases and compare within 1e-6.
Only do the former when a change is meant to move numbers, and say so in the commit.

Every case runs in a child process under :data:`PORTABLE_NUMERICS`, the same bits on any x86-64
host with AVX2: by default torch picks its kernels by CPU (ATen's AVX-512 or AVX2 loops, MKL's
Intel or AMD code path, oneDNN's JIT by ISA and cache size) and the pins moved by up to 0.3
between two hosts of the same kind (the measured spread is in ``tests/pinned/SPREAD.md``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
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
# encoders' features of the whole set take minutes on a CPU), two rounds, a public subset; without
# the unpaired pool, whatever its default (tests/test_public_pool.py checks what it changes).
OPENCLIPART = [
    "rounds=2",
    "train.local_epochs=1",
    "cream.public_subset=512",
    "delivery.select=false",
    "public_pool=false",
]
SLICE = 8

VOLATILE = {"train_seconds", "wall_seconds", "phase_seconds"}

# One code path for every kernel, whatever the CPU: ATen's AVX2 loops, MKL's conditional
# numerical reproducibility branch that Intel guarantees on Intel and AMD alike (COMPATIBLE),
# a fixed thread count (MKL and OpenMP reductions split by thread); oneDNN is switched off in
# the child (``torch.backends.mkldnn``: no environment variable does it), so convolutions take
# ATen's im2col and MKL's GEMM.
PORTABLE_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "MMFL_PIN_ONEDNN": "0",
}
# What the spread measurement runs beside the portable setting: the host's own choice, each
# kernel family moved alone, and the portable setting with the CPU features it must ignore.
SPREAD_SETTINGS: dict[str, dict[str, str]] = {
    "host default (ATen AVX-512, MKL auto, oneDNN on)": {"MMFL_PIN_ONEDNN": "1"},
    "ATen AVX2 kernels": {"ATEN_CPU_CAPABILITY": "avx2", "MMFL_PIN_ONEDNN": "1"},
    "MKL AVX2 code path forced": {"MKL_CBWR": "AVX2", "MMFL_PIN_ONEDNN": "1"},
    "oneDNN capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MMFL_PIN_ONEDNN": "1"},
    "portable, MKL limited to AVX2": {**PORTABLE_NUMERICS, "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "portable, oneDNN capped at AVX2": {**PORTABLE_NUMERICS, "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


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


def _run_here(dataset: str, method: str, out: Path) -> dict[str, float | str | None]:
    import torch

    from mmfl.simulation.engines import run_inprocess
    from mmfl.simulation.plan import build_plan

    torch.backends.mkldnn.enabled = os.environ.get("MMFL_PIN_ONEDNN", "1") == "1"
    plan = build_plan(case_spec(dataset, method, out.parent), out, force=True)
    return numbers(json.loads(run_inprocess(plan).to_json()))  # as summary.json holds it


def run_case(
    dataset: str, method: str, out: Path, env: dict[str, str] | None = None
) -> dict[str, float | str | None]:
    """The case's numbers, computed in a child process under :data:`PORTABLE_NUMERICS` (or
    ``env``: the spread measurement runs other kernel settings)."""
    return run_cases(dataset, [method], out, env)[method]


def run_cases(
    dataset: str, methods: list[str], out: Path, env: dict[str, str] | None = None
) -> dict[str, dict[str, float | str | None]]:
    """:func:`run_case` for several methods in one child process, one after another (a child's
    start, torch and Flower imported, costs seconds a case); method -> its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "numbers.json"
    settings = PORTABLE_NUMERICS if env is None else env
    child_env = {k: v for k, v in os.environ.items() if k not in PORTABLE_NUMERICS}
    child_env.update(settings, MMFL_HOME=str(_home_for(settings)))
    done = subprocess.run(
        [sys.executable, __file__, "--cases", dataset, str(out), str(result), *methods],
        env=child_env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pinned cases {dataset} {methods} failed:\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def _home_for(settings: dict[str, str]) -> Path:
    """An MMFL_HOME that shares the prepared data sets but keeps its own feature caches per
    kernel setting: features cached by another test under the host's kernels would carry their
    bits into the pinned numbers."""
    from mmfl.paths import data_root, mmfl_home

    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    home = mmfl_home() / "pinned-homes" / tag
    home.mkdir(parents=True, exist_ok=True)
    data_root().mkdir(parents=True, exist_ok=True)
    try:
        (home / "data").symlink_to(data_root(), target_is_directory=True)
    except FileExistsError:  # another worker made it
        pass
    return home


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


def spread(only: list[str]) -> None:
    """Every case (or those named in ``only``) under each of :data:`SPREAD_SETTINGS`, against the
    portable setting: how far each number moves (``tests/pinned/SPREAD.json`` and ``SPREAD.md``,
    rewritten after each case so that a stopped measurement keeps what it finished; cases
    measured earlier on the same CPU are kept)."""
    import tempfile

    table: dict[str, dict[str, dict[str, float]]] = {}
    previous = PINNED / "SPREAD.json"
    if previous.exists():  # cases measured before on this CPU are kept (a run may measure a few)
        saved = json.loads(previous.read_text())
        if saved["host"]["cpu"] == _cpu_name():
            table = saved["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, method in cases():
            if only and dataset not in only and method not in only:
                continue
            case = f"{dataset} {method}"
            ref = run_case(dataset, method, Path(tmp) / case / "portable")
            row = {}
            for i, (name, env) in enumerate(SPREAD_SETTINGS.items()):
                got = run_case(dataset, method, Path(tmp) / case / str(i), env)
                moved = [
                    abs(ref[k] - got[k])
                    for k in ref
                    if isinstance(ref[k], float) and isinstance(got.get(k), float) and ref[k] == ref[k]
                ]
                row[name] = {
                    "numbers": len(moved),
                    "moved": sum(d > 0 for d in moved),
                    "over_tolerance": sum(d > TOLERANCE for d in moved),
                    "largest": max(moved, default=0.0),
                }
                print(f"{case} | {name}: {row[name]}", flush=True)
            table[case] = row
            write_spread(table)


def write_spread(table: dict[str, dict[str, dict[str, float]]]) -> None:
    """``SPREAD.json`` and ``SPREAD.md`` from a table of case -> setting -> counts."""
    import platform

    import torch

    host = {"cpu": _cpu_name(), "machine": platform.machine(), "torch": torch.__version__}
    (PINNED / "SPREAD.json").write_text(json.dumps({"host": host, "cases": table}, indent=1) + "\n")
    lines = [
        "# How far the pinned numbers move with the CPU's kernels",
        "",
        f"Measured by `python tests/pinning.py --spread` on {host['cpu']} (torch {host['torch']}):",
        "each case under each setting against the portable one (`PORTABLE_NUMERICS`). Cells:",
        "numbers moved beyond the pins' tolerance (1e-6) of all compared, and the largest move.",
        f"{len(table)} of the {len(cases())} cases measured (a case not listed was not measured here).",
        "",
        "| case | " + " | ".join(SPREAD_SETTINGS) + " |",
        "|---|" + "---:|" * len(SPREAD_SETTINGS),
    ]
    for case, row in table.items():
        cells = [f"{c['over_tolerance']}/{c['numbers']}, {c['largest']:.2g}" for c in row.values()]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    (PINNED / "SPREAD.md").write_text("\n".join(lines) + "\n")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    import tempfile
    import time

    if sys.argv[1:2] == ["--cases"]:
        dataset, out, result, *methods = sys.argv[2:]
        numbers_of = {m: _run_here(dataset, m, Path(out) / m.replace("+", "plus") / "run") for m in methods}
        Path(result).write_text(json.dumps(numbers_of, allow_nan=True))
        sys.exit(0)
    if sys.argv[1:2] == ["--spread"]:
        spread(sys.argv[2:])
        sys.exit(0)
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
