"""A coordinator's site-free control, run in a child process: ``python -m
mmfl.simulation.controls FOLDER`` runs the spec in ``FOLDER/control.json`` with the in-process
engine, writing its run (``summary.json``, ``final_model.pt``) into ``FOLDER``
(:mod:`mmfl.server.delivery`)."""

from __future__ import annotations

import sys
from pathlib import Path

from mmfl.config import FederationSpec
from mmfl.server.delivery import CONTROL_FILE


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mmfl.simulation.controls FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    spec = FederationSpec.model_validate_json((folder / CONTROL_FILE).read_text(encoding="utf-8"))
    from mmfl.simulation.engines import run_control  # torch and Flower: after the argument check

    run_control(spec, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
