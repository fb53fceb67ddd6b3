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


PULL_BACKOFF_SECONDS = (0.05, 0.5)
"""First retry delay and cap when a message's objects are not uploaded yet (Flower: 1 s, 10 s)."""


def shorten_pull_backoff(
    initial: float = PULL_BACKOFF_SECONDS[0], cap: float = PULL_BACKOFF_SECONDS[1]
) -> None:
    """Retry pulling a not-yet-uploaded object after ``initial`` s, doubling up to ``cap``.

    A reply's header reaches the SuperLink before its arrays; Flower 1.42's ``pull_objects``
    then waits 1 s, 2 s, 4 s ... (up to 10 s) between tries, so a reply that was short of its
    arrays by a millisecond costs a second. The same holds one hop later: a ClientApp starts
    while its SuperNode is still pulling the message's arrays from the SuperLink, and its
    ``pull_and_inflate_object_from_tree`` (which passes its own defaults on) waited a second
    for them in about one message of three. Flower has no setting for it; these keyword
    defaults are shared by every caller in the process (the ServerApp's grid, the SuperNode,
    the ClientApps a warm launcher forks), so they are changed here, in the processes mmfl starts.
    """
    from mmfl.flower_internals import inflatable_utils

    for pull in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = pull.__kwdefaults__
        if defaults is None or not {"initial_backoff", "backoff_cap"} <= defaults.keys():
            raise RuntimeError(f"flwr's {pull.__name__} no longer takes initial_backoff/backoff_cap")
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
