"""Consoles for the command line: full width where no terminal is attached."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 240
"""Columns of output sent to a log, a pipe or a job scheduler (rich would assume 80, cutting
tables and wrapping run ids over several lines)."""


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): a terminal's own width, ``COLUMNS`` where set,
    else :data:`PIPE_WIDTH` for tables and one line per message, however long (grep-able)."""
    stream = sys.stderr if stderr else sys.stdout
    attached = stream.isatty() or "COLUMNS" in os.environ
    return Console(stderr=stderr, width=None if attached else PIPE_WIDTH, soft_wrap=not attached)
