"""MkDocs hook: the benchmark plots under ``benchmarks/results/`` are shown on the pages as they
are in the repository (``../benchmarks/results/NAME.png`` from a page in ``docs/``), so the same
relative link works on GitHub and in the built site, where they are copied to
``benchmarks/results/``. A link to a plot that does not exist still fails ``--strict``."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(
            File(
                f"../benchmarks/results/{plot.name}",
                config["docs_dir"],
                config["site_dir"],
                config["use_directory_urls"],
                dest_uri=f"benchmarks/results/{plot.name}",
                inclusion=InclusionLevel.NOT_IN_NAV,
            )
        )
    return files
