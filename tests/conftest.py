"""Shared fixtures: an isolated MMFL_HOME with the digits data set prepared once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: `from helpers import ...`

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture(scope="session")
def mmfl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MMFL_HOME for the session (prepared data and feature caches are shared)."""
    home = Path(os.environ.get("MMFL_TEST_HOME") or tmp_path_factory.mktemp("mmfl-home"))
    os.environ["MMFL_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def digits(mmfl_home: Path):
    from mmfl.data.builtin import prepare

    return prepare("digits")


@pytest.fixture(scope="session")
def openclipart_root() -> Path:
    root = Path("/usr/share/openclipart")
    if not (root / "png").is_dir():
        pytest.fail("openclipart is not installed: sudo apt-get install openclipart-png openclipart-svg")
    return root


@pytest.fixture()
def flower_identity():
    """Building a flwr Message outside a Flower runtime needs a process-level task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
