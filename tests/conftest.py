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


@pytest.fixture(scope="session", autouse=True)
def mmfl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MMFL_HOME for the session (prepared data and feature caches are shared), set for
    every test whatever the selection: a command a test starts never falls back to ~/.mmfl."""
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


def _pg_bin(name: str) -> str:
    import glob
    import shutil

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else (shutil.which(name) or name)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL server on a free loopback port, for this test session only."""
    import shutil
    import socket
    import subprocess

    if not Path(_pg_bin("initdb")).exists():
        pytest.fail("PostgreSQL server binaries are missing: sudo apt-get install postgresql")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mmfl-pg-"))  # pytest's own temp folders are 0700 root
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        root.chmod(0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mmfl"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mmfl"
    finally:
        subprocess.run(
            [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


# Files that take a minute or more (measured in CI), longest first after the deployment files.
LONG_FILES = [
    "test_pinned_openclipart.py",
    "test_own_data.py",
    "test_simulation.py",
    "test_privacy_sim.py",
    "test_console.py",
    "test_ray_cluster.py",
    "test_tracking.py",
    "test_agent.py",
    "test_crash_points.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The deployment tests first: with ``pytest -n 2 --dist loadfile`` they are the longest
    files and mostly wait on real processes, so the other tests fill the time beside them; then
    the other long files, longest first, so that no long file starts last on one worker."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name.startswith("test_deployment"):
            return 0
        return 1 + LONG_FILES.index(name) if name in LONG_FILES else 1 + len(LONG_FILES)

    items.sort(key=rank)
