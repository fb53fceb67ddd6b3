"""Memory of the contrastive ensemble at scale: 50,000 public rows, 10 sites, d = 256.

Each case runs in a fresh child process and reports its peak resident set size (``ru_maxrss``)
and wall time. The sites' representations alone take 10 x 50,000 x 256 x 4 B = 0.5 GB; scoring
every row against all 50,000 global rows at once would need a 50,000 x 50,000 float32 matrix
(10 GB) per site. :func:`~mmfl.strategies.ensemble.contrastive_scores` works in chunks of rows,
so the peak is the inputs plus one (chunk x 50,000) block; the goal is a peak under 2 GiB with
every row scored.

    python benchmarks/speed/aggregation.py                 # chunks 256, 1024, 4096; all rows scored
    python benchmarks/speed/aggregation.py --rows 20000 --chunks 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parents[1] / "results"
GOAL_BYTES = 2 * 1024**3

CASE = """
import resource, sys, time, torch
from torch.nn.functional import normalize
from mmfl.strategies.ensemble import OtherModality, contrastive_weights, weighted_sum
n, d, k, chunk = (int(a) for a in sys.argv[1:5])
torch.manual_seed(0)
g = normalize(torch.randn(n, d), dim=1)
sites = [normalize(torch.randn(n, d), dim=1) for _ in range(k)]
inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
w = contrastive_weights(sites, [OtherModality(g, torch.arange(n))], 1.0, chunk)
out = weighted_sum(sites, w)
seconds = time.perf_counter() - t0
assert out.shape == (n, d) and torch.isfinite(out).all()
print(inputs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, seconds)
"""


def measure(rows: int, dim: int, sites: int, chunk: int) -> dict[str, float | int]:
    out = subprocess.run(
        [sys.executable, "-c", CASE, str(rows), str(dim), str(sites), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    inputs, peak, seconds = out.stdout.split()
    return {
        "rows": rows,
        "dim": dim,
        "sites": sites,
        "chunk": chunk,
        "peak_bytes_after_inputs": int(inputs),
        "peak_bytes": int(peak),
        "seconds": float(seconds),
        "full_matrix_bytes": rows * rows * 4,
        "under_goal": int(peak) < GOAL_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--chunks", default="256,1024,4096")
    parser.add_argument("--out", type=Path, default=RESULTS / "aggregation.json")
    args = parser.parse_args()
    results = [measure(args.rows, args.dim, args.sites, int(c)) for c in args.chunks.split(",")]
    table = Table(title=f"contrastive ensemble, {args.rows:,} rows x {args.sites} sites, d = {args.dim}")
    for col in ("chunk", "peak RSS after inputs", "peak RSS", "seconds", "under 2 GiB"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["chunk"]),
            f"{r['peak_bytes_after_inputs'] / 2**30:.2f} GiB",
            f"{r['peak_bytes'] / 2**30:.2f} GiB",
            f"{r['seconds']:.1f}",
            "yes" if r["under_goal"] else "NO",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"goal_bytes": GOAL_BYTES, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
