"""Time spent per phase of a round (``RoundRecord.phase_seconds``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from mmfl.server.records import RoundRecord


@contextlib.contextmanager
def timed(record: RoundRecord, phase: str) -> Iterator[None]:
    """Add the time spent in the block to ``record.phase_seconds[phase]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record.phase_seconds[phase] = record.phase_seconds.get(phase, 0.0) + time.perf_counter() - t0
