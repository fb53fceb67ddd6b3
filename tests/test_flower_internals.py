"""Flower's internal names live in one adapter (mmfl/flower_internals.py), checked here under
the pinned Flower: an upgrade that moves one fails this test by name, not a deployment."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import flwr
import pytest

from mmfl import flower_internals

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.common.logger")


def test_flower_is_the_series_the_adapter_was_written_for() -> None:
    pin = re.search(r'"flwr\[simulation\]==([\d.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None and pin.group(1) == flower_internals.FLOWER_SERIES
    assert flwr.__version__.startswith(flower_internals.FLOWER_SERIES + ".")


@pytest.mark.parametrize("name", sorted(flower_internals.INTERNALS))
def test_every_internal_name_resolves(name: str) -> None:
    assert getattr(flower_internals, name) is not None


def test_no_other_module_imports_flower_internals() -> None:
    """Outside the adapter, mmfl imports only Flower's public modules."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if (
            any(p in path.parts for p in (".venv", "tests", "benchmarks", "site"))
            or path.name == "flower_internals.py"
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for module in names:
                if module.startswith("flwr") and module not in PUBLIC and module != "flwr":
                    offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []
