"""Whether a process recorded in a pid file still runs."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs.

    ``kill(pid, 0)`` is not enough: a killed process that nobody reaped (an orphan, in a
    container whose init does not reap) stays a zombie and still answers it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1][:1] not in ("Z", "X", "")
