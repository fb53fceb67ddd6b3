"""The FedAvg baseline: Flower's weighted average, and replies checked before they count."""

from __future__ import annotations

import re

import numpy as np
from flwr.app import Message

from helpers import SETTINGS, as_json
from mmfl.protocols.messages import MSG_WEIGHTS, PrivacyStatus, WeightsInstruction, WeightsReply
from mmfl.protocols.records import encode
from mmfl.server.exchange import read_weights_reply
from mmfl.server.records import SiteReport
from mmfl.strategies.fedavg import momentum_step, weighted_average


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


def test_fedavgm_momentum_step_is_heavy_ball_on_the_pseudo_gradient() -> None:
    w = {"w": np.zeros(2, np.float32), "steps": np.array(3, np.int64)}
    avg = {"w": np.array([1.0, -2.0], np.float32), "steps": np.array(4, np.int64)}
    new, v = momentum_step(w, avg, None, beta=0.9, lr=1.0)
    assert np.allclose(new["w"], [1.0, -2.0]) and np.allclose(v["w"], [1.0, -2.0])  # first round: FedAvg
    assert new["steps"] == 4 and "steps" not in v  # integer buffers take the average
    again, v2 = momentum_step(
        new, {"w": np.array([1.5, -2.0], np.float32), "steps": avg["steps"]}, v, 0.9, 1.0
    )
    assert np.allclose(v2["w"], [0.9 * 1.0 + 0.5, 0.9 * -2.0 + 0.0])
    assert np.allclose(again["w"], [1.0 + 1.4, -2.0 - 1.8])
    half, _ = momentum_step(w, avg, None, beta=0.0, lr=0.5)
    assert np.allclose(half["w"], [0.5, -1.0])  # server learning rate scales the step


def test_the_proximal_term_keeps_local_training_near_the_global_weights(digits) -> None:
    import torch

    from mmfl.client.training import proximal_term, train_round
    from mmfl.data.prepared import PreparedDataset
    from mmfl.data.tensors import load_tensors
    from mmfl.models.encoders import featurizers_for
    from mmfl.models.multimodal import MultiEncoder
    from mmfl.paths import feature_cache_root

    ds = PreparedDataset(digits.root)
    archs = {"image": "mlp", "text": "bag"}
    feats = featurizers_for(archs, ds.info.image_size, ds.info.image_channels)
    data = load_tensors(ds.manifest("private").samples[:300], feats, ds.info.classes, feature_cache_root())
    start = MultiEncoder(archs, {m: f.shape for m, f in feats.items()}, 32, len(ds.info.classes), seed=0)
    anchor = {n: p.detach().clone() for n, p in start.named_parameters()}
    assert float(proximal_term(start, anchor, 1.0)) == 0.0
    drift = {}
    for mu in (0.0, 10.0):
        model = MultiEncoder(archs, {m: f.shape for m, f in feats.items()}, 32, len(ds.info.classes), seed=0)
        settings = SETTINGS.model_copy(update={"regularisers": False, "local_epochs": 2, "proximal_mu": mu})
        rng = np.random.default_rng(0)
        train_round(model, None, data, None, settings, True, 0.1, rng, torch.device("cpu"), anchor=anchor)
        drift[mu] = float(proximal_term(model, anchor, 2.0))  # ||w - w_global||^2
    assert drift[10.0] < 0.5 * drift[0.0]


def test_fedavg_family_runs_and_fedavgm_checkpoints_its_velocity(digits, tmp_path) -> None:
    import torch

    from helpers import small_spec
    from mmfl.simulation.engines import run_inprocess
    from mmfl.simulation.plan import build_plan

    plain = as_json(
        run_inprocess(build_plan(small_spec('strategy="fedavg"', "rounds=1"), tmp_path / "plain"))
    )
    public = as_json(
        run_inprocess(build_plan(small_spec('strategy="fedavg-public"', "rounds=1"), tmp_path / "public"))
    )
    for r in public["rounds"]:  # the coordinator took part: it trained on the public set
        assert r["status"] == "completed" and r["server_metrics"]["train_loss"] is not None
    assert all(r["server_metrics"].get("train_loss") is None for r in plain["rounds"])
    assert public["final"]["retrieval"]["rsum"] != plain["final"]["retrieval"]["rsum"]
    run_inprocess(build_plan(small_spec('strategy="fedavgm"', "rounds=1"), tmp_path / "m"))
    state = torch.load(sorted((tmp_path / "m" / "checkpoints").glob("round-*.pt"))[-1], weights_only=False)
    velocity = state["trainer"]["velocity"]
    assert set(velocity) == {k for k, v in state["trainer"]["model"].items() if v.is_floating_point()}
    assert any(float(v.abs().sum()) > 0 for v in velocity.values())
