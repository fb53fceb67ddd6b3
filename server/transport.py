"""Messages to sites and their replies over a Flower ``Grid``, matched by message id.

The round's deadline holds even while a reply is half uploaded. Flower's ``pull_messages``
returns a reply's header as soon as the site pushed it and then waits for its objects until
the SuperLink's object-push session expires (180 s in Flower 1.42), whatever the caller's
timeout; one stuck reply in a batched pull would also hold every other reply of that pull. So
each message is followed by its own daemon thread, and a follower that Flower holds past the
deadline is left behind (Flower's HTTP client is thread-safe); its site simply did not answer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

OnReply = Callable[[int, int], None]
POLL_SECONDS = 0.2
"""How often one follower asks for its reply; slower with many sites (10 sites per 0.2 s)."""


def _follow(grid: Grid, message_id: str, deadline: float, interval: float, arrived: queue.Queue) -> None:
    """Pull one message's reply until it arrives or the deadline passes; put (id, reply or error)."""
    while time.monotonic() < deadline:
        try:
            got = list(grid.pull_messages([message_id]))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            arrived.put((message_id, exc))
            return
        if got:
            arrived.put((message_id, got[0]))
            return
        time.sleep(interval)


def collect(
    grid: Grid, message_ids: Sequence[str], timeout: float, on_reply: OnReply | None = None
) -> dict[str, Message | None]:
    """The reply to each of ``message_ids`` that arrives within ``timeout`` seconds (else None),
    reporting (done, total) as replies arrive. A pull that fails raises here."""
    deadline = time.monotonic() + timeout
    interval = POLL_SECONDS * max(1.0, len(message_ids) / 10)
    if getattr(grid, "pulls_never_block", False):
        return _poll_here(grid, message_ids, deadline, interval, on_reply)
    arrived: queue.Queue[tuple[str, Message | Exception]] = queue.Queue()
    for mid in message_ids:
        threading.Thread(
            target=_follow, args=(grid, mid, deadline, interval, arrived), name="mmfl-pull", daemon=True
        ).start()
    replies: dict[str, Message | None] = dict.fromkeys(message_ids)
    for done in range(1, len(message_ids) + 1):
        try:
            mid, reply = arrived.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if isinstance(reply, Exception):
            raise reply
        replies[mid] = reply
        if on_reply:
            on_reply(done, len(message_ids))
    return replies


def _poll_here(
    grid: Grid, message_ids: Sequence[str], deadline: float, interval: float, on_reply: OnReply | None
) -> dict[str, Message | None]:
    """Batched polls in the calling thread, for grids whose pull returns at once (the
    in-process grid: it also sets torch's thread count, which must happen in this thread)."""
    replies: dict[str, Message | None] = dict.fromkeys(message_ids)
    waiting = set(message_ids)
    while waiting and time.monotonic() < deadline:
        got = list(grid.pull_messages(sorted(waiting)))
        for reply in got:
            mid = reply.metadata.reply_to_message_id
            waiting.discard(mid)
            replies[mid] = reply
        if on_reply and got:
            on_reply(len(message_ids) - len(waiting), len(message_ids))
        if waiting:
            time.sleep(interval)
    return replies


def send_and_collect(
    grid: Grid,
    contents: Mapping[int, RecordDict],
    message_type: str,
    group_id: str,
    timeout: float,
    on_reply: OnReply | None = None,
) -> dict[int, Message | None]:
    """Send ``contents[node]`` to each node and :func:`collect` the replies; a node without a
    reply within ``timeout`` maps to None."""
    messages = []
    for node, content in contents.items():
        msg = Message(content, dst_node_id=node, message_type=message_type)
        msg.metadata.group_id = group_id
        messages.append(msg)
    ids = list(grid.push_messages(messages))
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    by_id = collect(grid, ids, timeout, on_reply)
    replies: dict[int, Message | None] = dict.fromkeys(contents)
    for mid, reply in by_id.items():
        replies[node_of[mid]] = reply
    return replies
