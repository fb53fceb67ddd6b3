"""The wire contract: round trips, and malformed replies dropped with a reason while the round
completes with the others."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from helpers import SETTINGS as HELPER_SETTINGS
from mmfl.protocols.messages import (
    Capabilities,
    DeviceInfo,
    PrivacyStatus,
    RepresentInstruction,
    RepresentReply,
)
from mmfl.protocols.records import (
    ProtocolError,
    arrays_of,
    check_represent_instruction,
    check_representations,
    check_weights,
    decode,
    encode,
    from_wire,
    payload_bytes,
    to_wire,
)
from mmfl.server.exchange import SiteExchange
from mmfl.server.sites import SiteRegistry
from mmfl.strategies.cream import CreamEnsemble
from mmfl.strategies.mean import MeanEnsemble

D = 8
SETTINGS = HELPER_SETTINGS.model_copy(update={"batch_size": 4, "public_batch_size": 4})


class FakeGrid:
    """A grid whose nodes answer with ``respond(node, message)`` at once (None: never)."""

    def __init__(self, nodes: list[int], respond=None) -> None:  # noqa: ANN001
        self.nodes = nodes
        self.respond = respond
        self.sent: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages: list[Message]) -> list[str]:
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent[m.metadata.message_id] = m
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids) -> list[Message]:  # noqa: ANN001
        out = []
        for mid in list(ids):
            reply = self.respond(self.sent[mid].metadata.dst_node_id, self.sent[mid])
            if reply is not None:
                out.append(reply)
        return out


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


def test_int8_rows_keep_their_direction_at_a_quarter_of_the_bytes() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    wire = to_wire(x, "int8")
    assert wire.dtype == np.int8 and wire.nbytes == x.nbytes // 4
    assert np.abs(wire).max(axis=1).min() == 127  # each row uses the full range
    back = from_wire(wire)
    assert back.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-6)
    cosines = (back * x).sum(axis=1)
    assert cosines.min() > 0.9998 and cosines.min() < 1.0  # lossy, but only just
    # A scaled sender cannot outweigh others: int8 carries the direction only.
    np.testing.assert_allclose(from_wire(to_wire(7.0 * x, "int8")), back, atol=1e-6)
    check_representations({"image": wire}, {"image": 500}, 256)
    wire[3] = 0
    with pytest.raises(ProtocolError, match="image: an int8 row of zeros has no direction"):
        check_representations({"image": wire}, {"image": 500}, 256)
    with pytest.raises(ProtocolError, match="expected float32, float16 or int8"):
        check_representations({"image": wire.astype(np.int16)}, {"image": 500}, 256)


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


def exchange_for(sites: dict[int, Capabilities], respond) -> SiteExchange:  # noqa: ANN001
    registry = SiteRegistry(["image", "text"], "f" * 64, lambda kind, message: None)
    registry.sites.update(sites)
    return SiteExchange(FakeGrid(list(sites), respond), registry, timeout=0.5)


def represent_instruction(n: int, round_: int = 1) -> RepresentInstruction:
    return RepresentInstruction(
        run_id="r",
        round=round_,
        public_fingerprint="f" * 64,
        public_indices=list(range(n)),
        rows={"image": list(range(n)), "text": list(range(n))},
        embed_dim=D,
        settings=SETTINGS,
    )


def test_malformed_replies_are_dropped_and_the_round_completes(flower_identity) -> None:
    n = 12
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
        10: caps("silent", ["image"]),
        11: caps("float64", ["image"]),
    }
    nan = unit(n, 4)
    nan[3, 2] = np.nan
    answers = {
        1: lambda m: reply_to(m, "good-image", {"image": unit(n, 2)}),
        2: lambda m: reply_to(m, "good-pair", {"image": unit(n, 3), "text": unit(n, 5)}),
        3: lambda m: reply_to(m, "wrong-shape", {"image": unit(n, 6)[:, :4]}),
        4: lambda m: reply_to(m, "nan", {"image": nan}),
        5: lambda m: reply_to(m, "wrong-rows", {"text": unit(n - 1, 7)}),
        6: lambda m: reply_to(m, "unknown-modality", {"xray": unit(n, 8)}),
        7: lambda m: reply_to(m, "refusing", {}, status="refused"),
        8: lambda m: Message(Error(code=0, reason="ClientApp crashed"), reply_to=m),
        9: lambda m: reply_to(m, "undeclared-text", {"text": unit(n, 9)}),
        10: lambda m: None,
        11: lambda m: reply_to(m, "float64", {"image": unit(n, 10).astype(np.float64)}),
    }
    exchange = exchange_for(sites, lambda node, m: answers[node](m))
    globals_ = {"image": unit(n, 0), "text": unit(n, 1)}
    reports, accepted = exchange.represent(sorted(sites), represent_instruction(n), globals_)
    report = {s.site_id: s for s in reports}
    assert list(report) == [c.site_id for c in sites.values()]  # every contacted site, in node order
    assert {k for k, s in report.items() if s.accepted} == {"good-image", "good-pair"}
    assert "shape (12, 4)" in report["wrong-shape"].reason
    assert "NaN" in report["nan"].reason
    assert "11 rows, expected 12" in report["wrong-rows"].reason
    assert "unexpected modality 'xray'" in report["unknown-modality"].reason
    assert "refused the round: budget" in report["refusing"].reason
    assert "ClientApp crashed" in report["crashed"].reason
    assert "unexpected modality 'text'" in report["undeclared-text"].reason
    assert "no reply within 0.5 s" in report["silent"].reason
    assert "dtype float64" in report["float64"].reason
    assert all(s.bytes_down > n * D * 4 * 2 for s in reports)  # both modalities' globals went out
    assert report["good-pair"].bytes_up >= n * D * 4 * 2 and report["silent"].bytes_up == 0
    merged = CreamEnsemble().aggregate(
        {m: [reps[m] for reps in accepted.values() if m in reps] for m in ("image", "text")},
        {m: torch.from_numpy(g) for m, g in globals_.items()},
        represent_instruction(n).rows,
    )
    assert merged.targets["image"].shape == (n, D) and merged.contributors == {"image": 2, "text": 1}
    assert np.allclose(merged.targets["text"].numpy(), unit(n, 5))  # the only text contributor


def test_a_modality_without_contributors_is_skipped_and_a_late_round_dropped(flower_identity) -> None:
    n = 6
    sites = {1: caps("img", ["image"])}
    round_of_reply = {"value": 2}
    exchange = exchange_for(
        sites, lambda node, m: reply_to(m, "img", {"image": unit(n, 2)}, round_=round_of_reply["value"])
    )
    globals_ = {"image": unit(n, 0), "text": unit(n, 1)}
    instruction = represent_instruction(n, round_=2)
    _, accepted = exchange.represent([1], instruction, globals_)
    merged = MeanEnsemble().aggregate(
        {m: [r[m] for r in accepted.values() if m in r] for m in ("image", "text")},
        {m: torch.from_numpy(g) for m, g in globals_.items()},
        instruction.rows,
    )
    assert list(merged.targets) == ["image"] and merged.skipped == ["text"]
    round_of_reply["value"] = 1  # a reply for another round is dropped
    reports, accepted = exchange.represent([1], instruction, globals_)
    assert accepted == {} and "reply for round 1, expected 2" in reports[0].reason


def test_a_site_checks_instructions_with_the_same_rules(flower_identity) -> None:
    """The coordinator -> site direction: the one check refuses what a reply would be refused for."""
    n = 6
    instruction = represent_instruction(n)
    good = {"image": unit(n, 0), "text": unit(n, 1)}
    check_represent_instruction(instruction, good, public_rows=n)
    cases = {
        "public index outside 0..4": (instruction, good, n - 1),
        "no text representations": (instruction, {"image": good["image"]}, n),
        "dtype float64": (instruction, {**good, "text": good["text"].astype(np.float64)}, n),
        "shape (6, 4)": (instruction, {**good, "image": good["image"][:, :4]}, n),
        "5 rows, expected 6": (instruction, {**good, "image": good["image"][:5]}, n),
        "contains NaN": (instruction, {**good, "image": np.full((n, D), np.nan, np.float32)}, n),
        "unexpected modality 'audio'": (instruction, {**good, "audio": good["image"]}, n),
        "rows outside this round's public indices": (
            instruction.model_copy(update={"public_indices": [0, 1, 2]}),
            good,
            n,
        ),
    }
    for reason, (instr, arrays, rows) in cases.items():
        with pytest.raises(ProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            check_represent_instruction(instr, arrays, public_rows=rows)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        check_represent_instruction(instruction, good, public_rows=n, max_bytes=100)


def test_weights_are_checked_in_both_directions() -> None:
    reference = {"w": (3,), "b": (2, 2)}
    check_weights({"w": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)}, reference)
    with pytest.raises(ProtocolError, match="weights lack b"):
        check_weights({"w": np.zeros(3, np.float32)}, reference)
    with pytest.raises(ProtocolError, match=r"b: shape \(2, 3\), expected \(2, 2\)"):
        check_weights({"w": np.zeros(3, np.float32), "b": np.zeros((2, 3), np.float32)}, reference)
    with pytest.raises(ProtocolError, match="w: contains NaN"):
        check_weights({"w": np.full(3, np.inf, np.float32), "b": np.zeros((2, 2), np.float32)}, reference)


def test_a_site_must_use_its_registered_name_and_a_name_is_held_once(flower_identity) -> None:
    """Issue 13: a deployed site is held to the name its key was registered under; in any run
    one name belongs to one node (the ledgers, evidence and rollback checks go by name)."""
    events: list[tuple[str, str]] = []
    registry = SiteRegistry(
        ["image", "text"], "f" * 64, lambda kind, message: events.append((kind, message)),
        names={1: "alice", 2: "bob"},
    )  # fmt: skip

    def reply(site: str) -> Message:
        return Message(encode(caps(site, ["image"])), dst_node_id=0, message_type="query.capabilities")

    assert registry.register(1, reply("alice")) is not None
    assert registry.register(2, reply("alice")) is None
    assert events[-1] == ("site-refused", "node 2 was registered as bob but calls itself alice; excluded")
    assert registry.register(3, reply("carol")) is None
    assert events[-1] == ("site-refused", "node 3 has no registered name but calls itself carol; excluded")
    assert registry.register(2, reply("bob")) is not None and set(registry.sites) == {1, 2}
    # Simulation (no names): a second node claiming a name already held is refused.
    free = SiteRegistry(["image"], "f" * 64, lambda kind, message: events.append((kind, message)))
    assert free.register(7, reply("alice")) is not None
    assert free.register(8, reply("alice")) is None
    assert events[-1] == ("site-refused", "node 8: the name alice is held by node 7; excluded")
    assert free.register(7, reply("alice")) is not None  # the same node again is no clash


def test_the_sampled_sites_depend_on_the_seed_not_on_the_node_numbers() -> None:
    """Flower's engine numbers nodes at random: the same seed must still pick the same sites."""
    from mmfl.server.sites import SiteSampler

    names = [f"site-{i:02d}" for i in range(20)]
    picks = []
    for numbering in (np.arange(20) + 1000, np.random.default_rng(7).permutation(10**6)[:20]):
        node_name = dict(zip(numbering.tolist(), names, strict=True))
        sampler = SiteSampler(5, seed=3)
        rounds = [sampler.sample(list(node_name), node_name.__getitem__) for _ in range(3)]
        assert all(r == sorted(r) and len(r) == 5 for r in rounds)  # node order, for merging
        picks.append([[node_name[n] for n in r] for r in rounds])
    assert picks[0] == [sorted(p) for p in picks[1]]
    assert len({tuple(p) for p in picks[0]}) > 1  # rounds differ
