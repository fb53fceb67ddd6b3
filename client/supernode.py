"""``flower-supernode`` with a shorter idle wait: ``python -m mmfl.client.supernode ARGS``.

Flower 1.42's SuperNode asks the SuperLink for a message, and when there is none sleeps 3 s
(``start_client_internal``: ``time.sleep(3)``). A message therefore waits 1.5 s on average, 3 s
at worst, before the site sees it — most of a deployed round on a small site
(``benchmarks/speed/deployed_rounds.py``). Once its ClientApp is running it waits for the reply, and
for each of the reply's objects, in sleeps of 0.5 s: on its own state, not on the network, so a
finished reply left 0.25 s later on average. Flower has no setting for either, so this entry
point runs Flower's own ``flower_supernode`` with that module's ``time.sleep`` capped: sleeps
of a second or more (asking the SuperLink) at ``MMFL_SUPERNODE_POLL`` seconds (default 0.5),
shorter ones (its own state) at ``LOCAL_WAIT`` (0.02 s); and with Flower's back-off for objects
not yet uploaded shortened (:func:`mmfl.flower_runtime.shorten_pull_backoff`). Everything else
is Flower's; a test checks that the module still sleeps through ``time`` (``tests/test_agent.py``).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from mmfl.flower_runtime import shorten_pull_backoff

DEFAULT_POLL = 0.5
LOCAL_WAIT = 0.02
"""Cap of the SuperNode's sub-second sleeps: they wait on its own state (a reply, an object)."""


def _capped_time(limit: float, local: float = LOCAL_WAIT) -> SimpleNamespace:
    """The ``time`` module with ``sleep`` capped: at ``limit`` seconds for sleeps of a second or
    more (Flower's idle wait between asking the SuperLink), at ``local`` for shorter ones."""
    clock = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    clock.sleep = lambda seconds: time.sleep(min(float(seconds), limit if seconds >= 1 else local))
    return clock


def patch(limit: float) -> None:
    from mmfl.flower_internals import start_client_internal as internal

    internal.time = _capped_time(limit)  # type: ignore[assignment]
    shorten_pull_backoff()


def main() -> None:
    patch(float(os.environ.get("MMFL_SUPERNODE_POLL", DEFAULT_POLL)))
    from mmfl.flower_internals import flower_supernode

    flower_supernode()


if __name__ == "__main__":
    main()
