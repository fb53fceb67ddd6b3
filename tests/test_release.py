"""The sites' ensemble as a deliverable (issue 34, item 2): a site releases its final model only
where its own policy consents, a DP site's release is recorded in its ledger and audit log with
nothing spent, a non-DP site is told plainly, a non-consenting site's weights never leave, and
the ensemble is a model like any other (evaluate, embed, export, mmfl.load, card)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from helpers import as_json, instruction, node_context, small_spec
from mmfl.client.app import app as client_app
from mmfl.client.privacy.audit import read as read_audit
from mmfl.client.privacy.ledger import PrivacyLedger
from mmfl.client.site import Site
from mmfl.config import SiteConfig, SitePolicy
from mmfl.protocols.messages import MSG_RELEASE, ReleaseInstruction, ReleaseReply
from mmfl.protocols.records import arrays_of, decode, encode
from mmfl.simulation.plan import build_plan

CONSENT = [f"sites.{i}.policy.release_final_model=true" for i in range(4)]


@pytest.fixture(scope="module")
def pair_config(digits, tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    plan = build_plan(small_spec(), tmp_path_factory.mktemp("sites"))
    return [SiteConfig.model_validate(c) for c in json.loads(Path(plan.site_configs).read_text())][2]


def configured(config: SiteConfig, state: Path, dp: bool, consent: bool) -> SiteConfig:
    spec = config.site.model_copy(
        update={
            "policy": SitePolicy(release_final_model=consent),
            "privacy": config.site.privacy.model_copy(update={"enabled": dp, "target_epsilon": 8.0}),
        }
    )
    return config.model_copy(update={"site": spec, "state_dir": state})


def ask_release(context: Context) -> Message:
    sent = Message(encode(ReleaseInstruction(run_id="t", round=1)), dst_node_id=1, message_type=MSG_RELEASE)
    return client_app(sent, context)


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "no-dp"])
def test_a_consenting_site_releases_once_recorded_and_nothing_spent(
    pair_config: SiteConfig, tmp_path: Path, flower_identity, dp: bool
) -> None:
    config = configured(pair_config, tmp_path / "state", dp=dp, consent=True)
    site = Site(config)
    site.represent(*instruction(site, 1))  # the run's model
    spent = site.privacy_status().epsilon_spent
    reply = ask_release(node_context(config, tmp_path / "sites.json"))
    meta = decode(reply.content, ReleaseReply)
    weights = arrays_of(reply.content)
    assert meta.status == "ok" and meta.architectures == config.site.architectures and meta.round == 1
    assert set(weights) == set(site.new_model().state_dict())
    (entry,) = [e for e in read_audit(tmp_path / "state") if e.message_type == MSG_RELEASE]
    assert entry.status == "ok" and entry.shapes  # what left is in the log
    if dp:
        assert "post-processing of a DP-trained model" in entry.note
        ledger = PrivacyLedger(tmp_path / "state", config.site.id).load()
        assert ledger is not None and ledger.events[-1].kind == "model-released"
        assert ledger.spent() == pytest.approx(spent, abs=1e-12)  # nothing new spent
    else:
        assert "WITHOUT differential privacy" in entry.note


def test_a_site_without_consent_never_sends_its_weights(
    pair_config: SiteConfig, tmp_path: Path, flower_identity
) -> None:
    config = configured(pair_config, tmp_path / "state", dp=False, consent=False)
    site = Site(config)
    site.represent(*instruction(site, 1))
    reply = ask_release(node_context(config, tmp_path / "sites.json"))
    meta = decode(reply.content, ReleaseReply)
    assert meta.status == "refused" and "release_final_model is false" in meta.reason
    assert arrays_of(reply.content) == {} and len(reply.content.array_records) == 0  # on the wire: nothing
    (entry,) = read_audit(tmp_path / "state")[-1:]
    assert entry.status == "refused" and entry.shapes == {} and entry.message_type == MSG_RELEASE


def test_a_federation_delivers_its_sites_ensemble_as_a_model_like_any_other(digits, tmp_path: Path) -> None:
    """Two paired sites consent (the uni-modal ones consent too and are left out, holding one
    modality); the run builds the ensemble, chooses on val, and a delivered ensemble loads,
    evaluates to the reported metrics, embeds and exports."""
    from mmfl.data.builtin import open_dataset
    from mmfl.inference import load
    from mmfl.inference.export import export_model
    from mmfl.protocols.summary import RunSummary
    from mmfl.simulation.engines import run_inprocess

    spec = small_spec(
        'strategy="cream+"', "rounds=1", "delivery.select=true", 'delivery.controls=["server-only"]', *CONSENT
    )
    out = tmp_path / "run"
    summary = as_json(run_inprocess(build_plan(spec, out)))
    assert RunSummary.read(out).delivery is not None  # summary.json parses as the typed record
    delivery = summary["delivery"]
    ensemble = delivery["ensemble"]
    assert set(ensemble["sites"]) <= {"pair-a", "pair-b"} and ensemble["sites"]
    assert set(ensemble["left_out"]) == {"img", "txt"}
    names = [c["strategy"] for c in delivery["candidates"]]
    assert names == ["cream+", "ensemble", "server-only"]
    best = max(delivery["candidates"], key=lambda c: c["val_rsum"])
    assert delivery["delivered"] == best["strategy"]
    # On this federation the sites' own models retrieve far better than one round's server
    # (val 487 against 181 and server-only's 222): the ensemble is delivered.
    assert delivery["delivered"] == "ensemble" and delivery["source"] == "ensemble"
    assert "the compact server (cream+) scored" in delivery["line"]
    # Each released site's contribution, leave-one-out on val: a member's is what the ensemble
    # loses without it, a left-out site's what adding it would change (not positive: it was left
    # out on val); the uni-modal sites cannot be members and have none.
    valued = ensemble["contributions_val"]
    assert set(valued) == {"pair-a", "pair-b"}
    by_k = {int(k): v for k, v in ensemble["val_rsum_by_members"].items()}
    if len(ensemble["sites"]) == 2:  # the second-ranked member adds what k = 2 gains over k = 1
        assert valued[ensemble["sites"][1]] == pytest.approx(by_k[2] - by_k[1])
    else:
        (member,) = ensemble["sites"]
        (other,) = set(valued) - {member}
        assert valued[member] == pytest.approx(by_k[1]) and valued[other] == pytest.approx(by_k[2] - by_k[1])
        assert valued[other] <= 0
    model = load(out)
    assert model.card.kind == "ensemble" and [m.site for m in model.card.members] == ensemble["sites"]
    assert model.card.embed_dim == 256 * len(ensemble["sites"])
    test = model.evaluate(open_dataset("digits").manifest("test"))
    assert test["retrieval"]["rsum"] == pytest.approx(ensemble["test"]["rsum"], abs=1e-4)
    z = model.embed("text", ["a photo of the digit 3", "seven"])
    assert z.shape == (2, model.card.embed_dim) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    exported = load(export_model(model, tmp_path / "export"))
    assert np.allclose(exported.embed("text", ["seven"]), model.embed("text", ["seven"]), atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert any(f.startswith("encoder-text-") for f in files) and "model_card.json" in files


def test_without_selection_the_ensemble_is_still_recorded_for_comparisons(digits, tmp_path: Path) -> None:
    """``delivery.select = false`` (benchmarks compare methods themselves): the federation's
    server is delivered, and the ensemble of the released models is recorded beside it."""
    from mmfl.simulation.engines import run_inprocess

    summary = as_json(
        run_inprocess(build_plan(small_spec('strategy="cream+"', "rounds=1", *CONSENT), tmp_path / "run"))
    )
    delivery = summary["delivery"]
    assert not delivery["selection"] and delivery["delivered"] == "cream+"
    assert [c["strategy"] for c in delivery["candidates"]] == ["cream+", "ensemble"]
    assert delivery["ensemble"]["sites"] and delivery["ensemble"]["val"]["rsum"] > 0
