"""Messages to sites and their replies over a Flower ``Grid``, matched by message id."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

OnReply = Callable[[int, int], None]


def send_and_collect(
    grid: Grid,
    contents: Mapping[int, RecordDict],
    message_type: str,
    group_id: str,
    timeout: float,
    on_reply: OnReply | None = None,
) -> dict[int, Message | None]:
    """Send ``contents[node]`` to each node; pull until every reply arrived or ``timeout``
    passed, reporting (done, total) after each poll. A node without a reply maps to None."""
    messages = []
    for node, content in contents.items():
        msg = Message(content, dst_node_id=node, message_type=message_type)
        msg.metadata.group_id = group_id
        messages.append(msg)
    ids = set(grid.push_messages(messages))
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    replies: dict[int, Message | None] = dict.fromkeys(contents)
    deadline = time.monotonic() + timeout
    while ids and time.monotonic() < deadline:
        got = list(grid.pull_messages(ids))
        for reply in got:
            ids.discard(reply.metadata.reply_to_message_id)
            # the SuperLink's error replies carry another source id; the message id is reliable
            replies[node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)] = reply
        if on_reply and got:
            on_reply(sum(r is not None for r in replies.values()), len(contents))
        if ids:
            time.sleep(0.2)
    return replies
