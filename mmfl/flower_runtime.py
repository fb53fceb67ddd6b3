"""How mmfl starts Flower's own processes (SuperLink, SuperNode, ``flwr``).

Flower's processes start their helpers (``flower-superexec``, ``flwr-serverapp``,
``flwr-clientapp``) by name from ``PATH``. An mmfl installed in a virtual environment that is
not activated (a systemd unit, CI, ``.venv/bin/mmfl``) would leave them unfindable, so the
interpreter's own ``bin`` folder goes first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def interpreter_bin() -> Path:
    return Path(sys.executable).parent


def flower_bin(name: str) -> str:
    """The Flower executable next to this interpreter, else the one on ``PATH``."""
    path = interpreter_bin() / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: its own ``FLWR_HOME``, no telemetry, no update
    check, no run-time dependency installation, and this interpreter's ``bin`` first on ``PATH``."""
    env = dict(os.environ)
    env.update(extra or {})
    path = env.get("PATH", "")
    env.update(
        PATH=os.pathsep.join([str(interpreter_bin()), path]) if path else str(interpreter_bin()),
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    return env
