"""The long fuzzing run: every property of ``tests/test_fuzz.py`` under the ``long`` hypothesis
profile (5,000 examples each; CI runs 150). Prints a table (property, examples, outcome, time)
and writes ``benchmarks/results/fuzz.{json,md}``.

    python benchmarks/security/fuzz.py [--examples 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PROPERTIES = [
    "test_decoders_accept_only_valid_messages",
    "test_decoders_refuse_garbage",
    "test_representations_are_accepted_exactly_when_valid",
    "test_a_site_refuses_instructions_outside_its_public_set",
    "test_weights_are_accepted_exactly_when_valid",
    "test_manifests_load_or_are_refused_in_one_line",
    "test_configs_load_or_are_refused_in_one_line",
]


def run(prop: str, examples: int) -> dict:
    env = {**os.environ, "MMFL_FUZZ_PROFILE": "long", "MMFL_FUZZ_EXAMPLES": str(examples)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", f"tests/test_fuzz.py::{prop}", "-q", "-p", "no:cacheprovider",
         "-n", "0", "--hypothesis-show-statistics"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    text = out.stdout + out.stderr
    # hypothesis' statistics: "- N passing, M failing, and K invalid test cases" per phase
    phases = re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid", text)
    return {
        "property": prop,
        "examples": sum(int(p) + int(f) for p, f, _ in phases) if phases else None,
        "failing": sum(int(f) for _, f, _ in phases) if phases else None,
        "outcome": "passed" if out.returncode == 0 else "FAILED",
        "seconds": round(time.perf_counter() - t0, 1),
        "failure": "" if out.returncode == 0 else "\n".join(text.splitlines()[-30:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args()
    rows = []
    console = Console()
    for prop in PROPERTIES:
        rows.append(run(prop, args.examples))
        console.print(
            f"{prop}: {rows[-1]['outcome']} ({rows[-1]['examples']} examples, {rows[-1]['seconds']} s)"
        )
    table = Table(title=f"fuzzing, {args.examples} examples per property")
    for col in ("property", "examples", "failing", "outcome", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("property", "examples", "failing", "outcome", "seconds")))
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(
        json.dumps({"examples_per_property": args.examples, "rows": rows}, indent=2)
    )
    md = ["| property | examples | failing | outcome | seconds |", "|---|---|---|---|---|"]
    md += [
        f"| {r['property']} | {r['examples']} | {r['failing']} | {r['outcome']} | {r['seconds']} |"
        for r in rows
    ]
    (RESULTS / "fuzz.md").write_text("\n".join(md) + "\n")
    sys.exit(0 if all(r["outcome"] == "passed" for r in rows) else 1)


if __name__ == "__main__":
    main()
