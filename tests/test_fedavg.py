"""The FedAvg baseline: Flower's weighted average, and replies checked before they count."""

from __future__ import annotations

import re

import numpy as np
from flwr.app import Message

from helpers import SETTINGS
from mmfl.protocols.messages import MSG_WEIGHTS, PrivacyStatus, WeightsInstruction, WeightsReply
from mmfl.protocols.records import encode
from mmfl.server.exchange import read_weights_reply
from mmfl.server.records import SiteReport
from mmfl.strategies.fedavg import weighted_average


def test_weighted_average_is_flowers_fedavg() -> None:
    got = weighted_average([{"w": np.ones(3, np.float32)}, {"w": np.full(3, 4, np.float32)}], [1, 3])
    assert np.allclose(got["w"], [3.25, 3.25, 3.25])  # (1*1 + 3*4) / 4


def test_weights_replies_are_checked_before_they_count(flower_identity) -> None:
    instruction = WeightsInstruction(run_id="r", round=1, settings=SETTINGS)
    sent = Message(
        encode(instruction, {"w": np.zeros(3, np.float32)}), dst_node_id=1, message_type=MSG_WEIGHTS
    )
    sent.metadata.__dict__["_message_id"] = "m1"

    def reply(w: list[float], n: int | None, status: str = "ok", round_: int = 1) -> Message:
        meta = WeightsReply(
            site_id="a", round=round_, status=status, architecture="x", privacy=PrivacyStatus(enabled=False)
        )
        metrics = {"task_loss": 1.0} if n is None else {"num-examples": n, "task_loss": 1.0}
        return Message(encode(meta, {"w": np.asarray(w, np.float32)}, metrics), reply_to=sent)

    def read(message: Message) -> tuple[object, SiteReport]:
        report = SiteReport(site_id="a", node_id=1)
        got, _ = read_weights_reply(message, report, instruction, {"w": (3,)})
        return got, report

    got, report = read(reply([1, 2, 3], 5))
    assert report.accepted and got.examples == 5 and np.array_equal(got.weights["w"], [1, 2, 3])
    for bad, reason in [
        (reply([1, 2, 3], 5, status="refused"), "site refused the round"),
        (reply([1, 2], 5), r"w: shape \(2,\), expected \(3,\)"),
        (reply([1, np.nan, 3], 5), "w: contains NaN"),
        (reply([1, 2, 3], None), "no positive num-examples"),
        (reply([1, 2, 3], 0), "no positive num-examples"),
        (reply([1, 2, 3], 5, round_=2), "reply for round 2, expected 1"),
    ]:
        got, report = read(bad)
        assert got is None and not report.accepted
        assert re.search(reason, report.reason), report.reason
