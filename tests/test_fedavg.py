"""The FedAvg baseline averages exactly as Flower's FedAvg: weighted by num-examples."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from mmfl.protocols.messages import PrivacyStatus, TrainSettings, WeightsInstruction, WeightsReply
from mmfl.protocols.records import encode
from mmfl.strategies.fedavg import PairedFedAvg


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def test_weighted_average_and_refusals(flower_identity) -> None:
    settings = TrainSettings(
        local_epochs=1,
        batch_size=2,
        lr=0.1,
        weight_decay=0,
        public_batch_size=2,
        contrast_temperature=0.5,
        interintra_weight=0.5,
    )
    strategy = PairedFedAvg({1: "a", 2: "b", 3: "c"})
    instruction = WeightsInstruction(run_id="r", round=1, settings=settings)
    messages = list(
        strategy.configure_train(
            1,
            ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
            ConfigRecord({"instruction": instruction.model_dump_json()}),
            FakeGrid(),
        )
    )
    for i, m in enumerate(messages):
        m.metadata.__dict__["_message_id"] = f"m{i}"
    strategy.remember_sent(messages)

    def reply(msg: Message, site: str, w: list[float], n: int, status: str = "ok") -> Message:
        meta = WeightsReply(
            site_id=site, round=1, status=status, architecture="x", privacy=PrivacyStatus(enabled=False)
        )
        return Message(
            encode(meta, {"w": np.asarray(w, np.float32)}, {"num-examples": n, "task_loss": 1.0}),
            reply_to=msg,
        )

    replies = [
        reply(messages[0], "a", [1, 1, 1], 1),
        reply(messages[1], "b", [4, 4, 4], 3),
        reply(messages[2], "c", [100, 0, 0], 50, "refused"),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert np.allclose(arrays["w"].numpy(), [3.25, 3.25, 3.25])  # (1*1 + 3*4) / 4
    accepted = {s.site_id: s.accepted for s in strategy.last_round.sites}
    assert accepted == {"a": True, "b": True, "c": False}
