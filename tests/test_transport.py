"""The round's deadline holds while Flower waits for a half-uploaded reply, and one stuck reply
does not hold the others."""

from __future__ import annotations

import threading
import time

import pytest

from mmfl.server.transport import collect


class Grid:
    """A grid at the edge of this unit test: ``stuck`` ids block the way Flower's pull does on a
    reply with missing objects; the others answer on the second poll. The deployed case is
    tests/test_deployment_faults.py."""

    def __init__(self, stuck: set[str]) -> None:
        self.stuck, self.release, self.polls = stuck, threading.Event(), {}

    def pull_messages(self, ids: list[str]) -> list[str]:
        (mid,) = ids
        self.polls[mid] = self.polls.get(mid, 0) + 1
        if mid in self.stuck:
            self.release.wait(60)
            return []
        return [f"reply to {mid}"] if self.polls[mid] >= 2 else []


def test_a_stuck_reply_holds_neither_the_deadline_nor_the_other_replies() -> None:
    grid = Grid(stuck={"b"})
    progress: list[tuple[int, int]] = []
    t0 = time.monotonic()
    replies = collect(grid, ["a", "b", "c"], 1.5, lambda done, total: progress.append((done, total)))  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 10
    assert replies == {"a": "reply to a", "b": None, "c": "reply to c"}
    assert progress == [(1, 3), (2, 3)] and grid.polls["b"] == 1
    grid.release.set()


def test_a_failed_pull_raises_in_the_caller() -> None:
    class Broken(Grid):
        def pull_messages(self, ids: list[str]) -> list[str]:
            raise ConnectionError("SuperLink gone")

    with pytest.raises(ConnectionError, match="SuperLink gone"):
        collect(Broken(set()), ["a"], 5.0)  # type: ignore[arg-type]
