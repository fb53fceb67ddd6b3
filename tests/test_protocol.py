"""The wire contract: round trips, and malformed replies dropped with a reason while the round
completes with the others."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message

from helpers import SETTINGS as HELPER_SETTINGS
from mmfl.protocols.messages import (
    Capabilities,
    DeviceInfo,
    PrivacyStatus,
    RepresentInstruction,
    RepresentReply,
)
from mmfl.protocols.records import ProtocolError, arrays_of, decode, encode, payload_bytes
from mmfl.strategies.cream import CreamEnsemble

D = 8
SETTINGS = HELPER_SETTINGS.model_copy(update={"batch_size": 4, "public_batch_size": 4})


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def caps(site: str, modalities: list[str]) -> Capabilities:
    return Capabilities(
        site_id=site,
        modalities=modalities,
        architectures={m: "mlp" for m in modalities},
        samples={m: 10 for m in modalities},
        paired_samples=0,
        classes=10,
        device=DeviceInfo(kind="cpu", name="cpu"),
        public_fingerprint="f" * 64,
        privacy=PrivacyStatus(enabled=False),
    )


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_messages_round_trip_and_refuse_other_versions(flower_identity) -> None:
    c = caps("a", ["image"])
    assert decode(encode(c), Capabilities) == c
    bad = encode(c.model_copy(update={"protocol": 99}))
    with pytest.raises(ProtocolError, match="protocol version 99"):
        decode(bad, Capabilities)
    with pytest.raises(ProtocolError, match="malformed Capabilities: modalities: Field required"):
        decode(
            encode(RepresentReply(site_id="x", round=1, privacy=PrivacyStatus(enabled=False))), Capabilities
        )
    content = encode(c, {"image": np.ones((3, D), np.float16)})
    assert arrays_of(content)["image"].dtype == np.float16 and payload_bytes(content) >= 3 * D * 2


def reply_to(
    msg: Message, site: str, arrays: dict[str, np.ndarray], status: str = "ok", round_: int = 1
) -> Message:
    meta = RepresentReply(
        site_id=site,
        round=round_,
        status=status,
        reason="budget" if status != "ok" else "",
        privacy=PrivacyStatus(enabled=False),
    )
    return Message(encode(meta, arrays), reply_to=msg)


def test_malformed_replies_are_dropped_and_the_round_completes(flower_identity) -> None:
    n = 12
    rows = {"image": list(range(n)), "text": list(range(n))}
    strategy = CreamEnsemble(["image", "text"], D)
    sites = {
        1: caps("good-image", ["image"]),
        2: caps("good-pair", ["image", "text"]),
        3: caps("wrong-shape", ["image"]),
        4: caps("nan", ["image"]),
        5: caps("wrong-rows", ["text"]),
        6: caps("unknown-modality", ["image"]),
        7: caps("refusing", ["image"]),
        8: caps("crashed", ["image"]),
        9: caps("undeclared-text", ["image"]),
    }
    for node, c in sites.items():
        strategy.register(node, c)
    instruction = RepresentInstruction(
        run_id="r",
        round=1,
        public_fingerprint="f" * 64,
        public_indices=list(range(n)),
        rows=rows,
        embed_dim=D,
        settings=SETTINGS,
    )
    from flwr.app import Array, ArrayRecord

    globals_ = ArrayRecord({"image": Array(unit(n, 0)), "text": Array(unit(n, 1))})
    messages = list(
        strategy.configure_train(
            1, globals_, ConfigRecord({"instruction": instruction.model_dump_json()}), FakeGrid(list(sites))
        )
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == list(sites)
    by_node = {}
    for m in messages:
        m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        by_node[m.metadata.dst_node_id] = m
    nan = unit(n, 4)
    nan[3, 2] = np.nan
    replies = [
        reply_to(by_node[1], "good-image", {"image": unit(n, 2)}),
        reply_to(by_node[2], "good-pair", {"image": unit(n, 3), "text": unit(n, 5)}),
        reply_to(by_node[3], "wrong-shape", {"image": unit(n, 6)[:, :4]}),
        reply_to(by_node[4], "nan", {"image": nan}),
        reply_to(by_node[5], "wrong-rows", {"text": unit(n - 1, 7)}),
        reply_to(by_node[6], "unknown-modality", {"xray": unit(n, 8)}),
        reply_to(by_node[7], "refusing", {}, status="refused"),
        Message(Error(code=0, reason="ClientApp crashed"), reply_to=by_node[8]),
        reply_to(by_node[9], "undeclared-text", {"text": unit(n, 9)}),
    ]
    strategy.remember_sent(messages)
    aggregated, metrics = strategy.aggregate_train(1, replies)
    report = {s.site_id: s for s in strategy.last_round.sites}
    assert {k for k, s in report.items() if s.accepted} == {"good-image", "good-pair"}
    assert "shape (12, 4)" in report["wrong-shape"].reason
    assert "NaN" in report["nan"].reason
    assert "11 rows, expected 12" in report["wrong-rows"].reason
    assert "unexpected modality 'xray'" in report["unknown-modality"].reason
    assert "refused the round: budget" in report["refusing"].reason
    assert "ClientApp crashed" in report["crashed"].reason
    assert "unexpected modality 'text'" in report["undeclared-text"].reason
    assert aggregated is not None and aggregated["image"].numpy().shape == (n, D)
    assert np.allclose(aggregated["text"].numpy(), unit(n, 5))  # the only text contributor
    assert metrics["sites-accepted"] == 2 and metrics["sites-dropped"] == 7


def test_a_modality_without_contributors_is_skipped(flower_identity) -> None:
    n = 6
    strategy = CreamEnsemble(["image", "text"], D)
    strategy.register(1, caps("img", ["image"]))
    instruction = RepresentInstruction(
        run_id="r",
        round=2,
        public_fingerprint="f" * 64,
        public_indices=list(range(n)),
        rows={"image": list(range(n)), "text": list(range(n))},
        embed_dim=D,
        settings=SETTINGS,
    )
    from flwr.app import Array, ArrayRecord

    msgs = list(
        strategy.configure_train(
            2,
            ArrayRecord({"image": Array(unit(n, 0)), "text": Array(unit(n, 1))}),
            ConfigRecord({"instruction": instruction.model_dump_json()}),
            FakeGrid([1]),
        )
    )
    msgs[0].metadata.__dict__["_message_id"] = "m1"
    strategy.remember_sent(msgs)
    aggregated, _ = strategy.aggregate_train(2, [reply_to(msgs[0], "img", {"image": unit(n, 2)}, round_=2)])
    assert aggregated is not None and list(aggregated.keys()) == ["image"]
    assert strategy.last_round.skipped_modalities == ["text"]
    # A reply for another round is dropped.
    aggregated, _ = strategy.aggregate_train(2, [reply_to(msgs[0], "img", {"image": unit(n, 2)}, round_=1)])
    assert aggregated is None and "expected 2" in strategy.last_round.sites[0].reason
