"""DP inside whole federations and at a real site: epsilon reported per site per round, budgets
enforced by the site, a ledger that survives a killed site process, FedAvg under DP, fresh noise,
group-level privacy on a real manifest, and what a DP site sends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpers import SETTINGS, as_json, instruction, node_context, small_spec
from mmfl.client.app import app as client_app
from mmfl.client.privacy.dp_sgd import PoissonSampler
from mmfl.client.privacy.ledger import LedgerError, PrivacyLedger, epsilon_of
from mmfl.client.privacy.secure_random import SecureRandom
from mmfl.client.site import Site
from mmfl.config import SiteConfig
from mmfl.data.manifest import load_manifest, write_manifest
from mmfl.data.sample import Sample
from mmfl.protocols.messages import (
    MSG_CAPABILITIES,
    MSG_REPRESENT,
    MSG_WEIGHTS,
    Capabilities,
    EvaluateReply,
    ReleaseReply,
    RepresentReply,
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import arrays_of, decode, encode
from mmfl.protocols.summary import RunSummary
from mmfl.server.store import SiteRoundRow, open_store
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import write_report

DP_ALL = [f"sites.{i}.privacy.enabled=true" for i in range(4)]


def test_dp_federation_reports_epsilon_per_site_per_round(digits, tmp_path: Path) -> None:
    summary = as_json(run_inprocess(build_plan(small_spec(*DP_ALL), tmp_path / "dp")))
    eps = [{s["site_id"]: s["epsilon"] for s in r["sites"]} for r in summary["rounds"]]
    assert set(eps[0]) == set(eps[1]) == {"img", "txt", "pair-a", "pair-b"}
    for site in eps[0]:
        assert 0 < eps[0][site] < eps[1][site] <= 8.0
    assert summary["reproducible"] is False
    for s in summary["sites"]:
        assert s["privacy"]["enabled"] and s["privacy"]["target_epsilon"] == 8.0
        assert s["private_samples"] is None and s["paired_samples"] is None  # the size stays at the site
        assert s["private_units_noisy"] == s["privacy"]["noisy_units"] > 100
        # the status the site reported last: what it spent by the end of the run
        assert s["privacy"]["epsilon_spent"] == pytest.approx(eps[-1][s["id"]])
    # Nothing computed on private data, and no timing, leaves a DP site.
    for r in summary["rounds"]:
        for s in r["sites"]:
            assert set(s["metrics"]) <= {"dp_steps", "noise_multiplier", "sample_rate", "public_loss"}
            assert s["metrics"]["dp_steps"] >= 1
    assert all(m == {} for m in summary["final"]["site_metrics"].values())
    with Session(open_store(tmp_path / "dp" / "runs.sqlite")) as s:
        stored = s.scalars(select(SiteRoundRow)).all()
    assert len(stored) == 8 and all(row.epsilon is not None and row.epsilon > 0 for row in stored)
    write_report(RunSummary.model_validate(summary), tmp_path / "dp")
    report = (tmp_path / "dp" / "report.md").read_text()
    assert "Privacy spent" in report and "(ε-DP count)" in report
    evidence = json.loads((tmp_path / "dp" / "evidence.json").read_text())
    assert all("add-or-remove-one adjacency" in s["privacy_statement"] for s in evidence["sites"])


def test_a_site_refuses_the_round_that_would_exceed_its_budget(digits, tmp_path: Path) -> None:
    spec = small_spec(
        "rounds=3",
        "sites.0.privacy.enabled=true",
        "sites.0.privacy.planned_rounds=1",
        "sites.0.privacy.target_epsilon=2.0",
    )
    summary = as_json(run_inprocess(build_plan(spec, tmp_path / "budget")))
    by_round = [{s["site_id"]: s for s in r["sites"]} for r in summary["rounds"]]
    assert by_round[0]["img"]["accepted"] and 0 < by_round[0]["img"]["epsilon"] <= 2.0
    for later in by_round[1:]:
        img = later["img"]
        assert not img["accepted"]
        assert (
            "privacy budget: target epsilon 2.000, spent" in img["reason"] and "would reach" in img["reason"]
        )
        assert all(s["accepted"] for sid, s in later.items() if sid != "img")
    assert [r["status"] for r in summary["rounds"]] == ["completed"] * 3
    ledger = PrivacyLedger(tmp_path / "budget" / "sites" / "img" / "state", "img").load()
    assert ledger is not None and [e.round for e in ledger.entries] == [1]


ONE_ROUND = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
from helpers import instruction
from mmfl.client.site import Site
from mmfl.config import SiteConfig

configs, round_, linger = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "linger"
site = Site(SiteConfig.model_validate(json.load(open(configs))[0]))
reply, _ = site.represent(*instruction(site, round_, run_id="kill-test", n=None))
print(json.dumps({"status": reply.status, "epsilon": reply.privacy.epsilon_spent, "metrics": reply.metrics}), flush=True)
if linger:
    time.sleep(600)
"""
TESTS = str(Path(__file__).parent)


def test_a_killed_site_process_restarts_with_its_ledger(digits, tmp_path: Path) -> None:
    plan = build_plan(small_spec("sites.0.privacy.enabled=true"), tmp_path / "kill")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", ONE_ROUND, str(plan.site_configs), "1", "linger", TESTS],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out1 = json.loads(first.stdout.readline())
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the site dies between rounds
        first.wait(timeout=30)
    assert out1["status"] == "ok" and out1["epsilon"] > 0
    second = subprocess.run(
        [sys.executable, "-c", ONE_ROUND, str(plan.site_configs), "2", "once", TESTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert out2["status"] == "ok" and out2["epsilon"] > out1["epsilon"]
    ledger = json.loads(
        (tmp_path / "kill" / "sites" / "img" / "state" / "privacy" / "ledger.json").read_text()
    )
    assert [e["round"] for e in ledger["entries"]] == [1, 2]
    sigma, q = ledger["noise_multiplier"], ledger["entries"][0]["sample_rate"]
    total = sum(e["steps"] for e in ledger["entries"])
    one_run = epsilon_of([[sigma, q, total]], 1e-5, "rdp") + ledger["count_releases"][0]["epsilon"]
    assert abs(out2["epsilon"] - one_run) < 1e-9


# ------------------------------------------------------------------------- a single real site


@pytest.fixture(scope="module")
def site_configs(digits, tmp_path_factory: pytest.TempPathFactory) -> list[SiteConfig]:
    plan = build_plan(small_spec(), tmp_path_factory.mktemp("sites"))
    return [SiteConfig.model_validate(c) for c in json.loads(Path(plan.site_configs).read_text())]


def site_like(config: SiteConfig, state: Path, **privacy: object) -> Site:
    spec = config.site.model_copy(update={"privacy": config.site.privacy.model_copy(update=privacy)})
    return Site(config.model_copy(update={"site": spec, "state_dir": state}))


def test_two_runs_of_the_same_dp_round_release_different_noise(site_configs, tmp_path: Path) -> None:
    img = site_configs[0]
    released = {}
    for dp in (False, True):
        reps = []
        for k in range(2):  # identical configuration, seed and instruction; fresh state folders
            site = site_like(img, tmp_path / f"{dp}-{k}", enabled=dp)
            reply, arrays = site.represent(*instruction(site, 1))
            assert reply.status == "ok"
            reps.append(arrays["image"])
        released[dp] = reps
    assert np.array_equal(*released[False])  # without DP a run is reproducible
    assert not np.allclose(*released[True], atol=1e-4)  # with DP no seed replays the noise


def test_what_a_dp_site_sends(site_configs, tmp_path: Path) -> None:
    site = site_like(site_configs[2], tmp_path / "pair", enabled=True)  # a paired site
    caps = site.capabilities()
    assert caps.samples is None and caps.paired_samples is None
    assert caps.data_fingerprint != site.data.private_manifest.fingerprint()  # keyed, not the content hash
    assert caps.data_fingerprint == site.data.data_key and len(caps.data_fingerprint) == 64
    assert caps.privacy.noisy_units is None and caps.privacy.epsilon_spent == 0.0  # no size at all yet
    reply, _ = site.represent(*instruction(site, 1))
    units = reply.privacy.noisy_units  # the count leaves with the first round
    assert units is not None and site.budget.load().count_releases[0].epsilon == pytest.approx(0.05)
    assert reply.train_seconds == 0.0 and "train_seconds" not in reply.metrics
    assert reply.metrics["sample_rate"] == 32 / units  # from the noisy count, not the exact size
    assert reply.metrics["dp_steps"] == round(units / 32)
    fields = set().union(
        *(m.model_fields for m in (Capabilities, RepresentReply, WeightsReply, EvaluateReply, ReleaseReply))
    )
    assert fields <= set(RELEASED_FIELDS), (
        f"classify new fields in RELEASED_FIELDS: {fields - set(RELEASED_FIELDS)}"
    )


# What each message from a DP site carries, and why epsilon covers it (docs/privacy.md's table).
RELEASED_FIELDS = {
    "protocol": "constant",
    "site_id": "configuration",
    "round": "the coordinator's instruction",
    "status": "whether the budget allows the round: a function of the ledger (DP releases and settings)",
    "reason": "refusal reasons built from public facts only (protocol, ledger, budget); others are generic",
    "metrics": "dp_steps, sample_rate (from the noisy count), noise_multiplier (settings), public_loss "
    "(public data through the DP model); evaluate.task: nothing",
    "architecture": "configuration",
    "privacy": "budget, delta, epsilon spent, noisy count: settings and functions of DP releases",
    "ledger_locked": "whether the site's own ledger failed verification: no function of its data",
    "train_seconds": "0 for a DP site",
    "modalities": "configuration",
    "architectures": "configuration",
    "samples": "None for a DP site",
    "paired_samples": "None for a DP site",
    "classes": "the public data set's description",
    "device": "the site's hardware",
    "public_fingerprint": "hash of the public set",
    "data_fingerprint": "HMAC with the site's secret: no test of a guessed data set",
    "releases_final_model": "the site's policy (configuration)",
    "shares_weights": "the site's policy (configuration): whether it accepts weights work",
}


def test_fedavg_with_dp_sites_runs_dp_sgd_and_is_accounted(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    summary = as_json(run_inprocess(build_plan(small_spec(*DP_ALL, "strategy=fedavg"), tmp_path / "fedavg")))
    eps = [{s["site_id"]: s["epsilon"] for s in r["sites"]} for r in summary["rounds"]]
    assert set(eps[0]) == {"pair-a", "pair-b"} and all(0 < eps[0][s] < eps[1][s] for s in eps[0])
    for site in ("pair-a", "pair-b"):
        ledger = PrivacyLedger(tmp_path / "fedavg" / "sites" / site / "state", site).load()
        assert ledger is not None and [e.round for e in ledger.entries] == [1, 2]
    # The message itself: weights out, the noisy count as num-examples, no private loss.
    site = site_like(site_configs[2], tmp_path / "direct", enabled=True)
    context = node_context(site.config, tmp_path / "direct.json", run=1)
    weights = {k: v.numpy() for k, v in site.new_model().state_dict().items()}
    message = Message(
        encode(WeightsInstruction(run_id="w", round=1, settings=SETTINGS), weights),
        dst_node_id=1,
        message_type=MSG_WEIGHTS,
    )
    reply = client_app(message, context)
    metrics = dict(reply.content["metrics"])
    ledger = PrivacyLedger(tmp_path / "direct", site.spec.id).load()
    assert ledger is not None and len(ledger.entries) == 1
    assert metrics == {"num-examples": ledger.count_releases[0].units}
    assert set(arrays_of(reply.content)) == set(weights)
    audit = (tmp_path / "direct" / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["epsilon_after"] == pytest.approx(ledger.spent())


def test_group_level_dp_with_the_default_holdout(site_configs, tmp_path: Path) -> None:
    img = site_configs[0]
    rows = load_manifest(img.manifest).samples
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5, size=len(rows))  # patients with 1-4 rows each
    patient = np.repeat(np.arange(len(rows)), sizes)[: len(rows)]
    grouped = [Sample(s.id, s.values, s.label, f"patient-{p}") for s, p in zip(rows, patient, strict=True)]
    manifest = write_manifest(tmp_path / "grouped.jsonl", grouped, relative_to=tmp_path)
    config = img.model_copy(update={"manifest": manifest})
    site = site_like(config, tmp_path / "state", enabled=True, unit="group")
    assert config.holdout_fraction == 0.2
    train, hold = site.data.rows
    samples = site.data.private_manifest.samples
    assert {samples[i].group for i in train}.isdisjoint({samples[i].group for i in hold})
    data = site.data
    groups = data.train_groups
    assert groups is not None and data.training_units == len(set(groups)) < len(groups)
    ledger = site.budget.open(data.data_key, data.training_units)
    plan = site.budget.plan(ledger, data.data_key, 32, 1)
    sampler = PoissonSampler.build(groups, len(groups), plan.sample_rate, SecureRandom())
    rows_of = Counter(groups)
    multi = 0
    for _ in range(3000):
        batch = sampler.draw()
        assert len({groups[i] for i in batch}) == len(batch)  # never two rows of one patient
        multi += sum(1 for i in batch if rows_of[groups[i]] > 1)
    assert multi > 1000  # patients with several rows were drawn, one row at a time
    reply, arrays = site.represent(*instruction(site, 1))
    assert reply.status == "ok" and reply.privacy.unit == "group" and arrays["image"].shape[0] > 0
    assert PrivacyLedger(tmp_path / "state", site.spec.id).load().entries[0].steps == plan.steps  # type: ignore[union-attr]


def test_a_dp_round_never_continues_a_model_trained_without_dp(site_configs, tmp_path: Path) -> None:
    state = tmp_path / "state"
    plain = site_like(site_configs[0], state, enabled=False)
    assert plain.represent(*instruction(plain, 1))[0].status == "ok"
    private = site_like(site_configs[0], state, enabled=True)
    reply, _ = private.represent(*instruction(private, 2, local_epochs=0))  # encode only: no step
    assert reply.status == "ok" and reply.metrics["dp_fresh_model"] == 1.0 and reply.metrics["dp_steps"] == 0
    saved = torch.load(state / "models" / "t" / "round-0002.pt", weights_only=True)["state"]
    trained = torch.load(state / "models" / "t" / "round-0001.pt", weights_only=True)["state"]
    fresh = private.new_model().state_dict()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)
    assert not all(torch.equal(saved[k], trained[k]) for k in fresh)
    ledger = PrivacyLedger(state, private.spec.id).load()
    assert ledger is not None and ledger.events[-1].kind == "fresh-model" and ledger.entries == []
    assert "round 1 was trained without DP" in ledger.events[-1].detail


def test_a_dp_site_says_nothing_about_its_data_when_it_fails(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    site = site_like(site_configs[0], tmp_path / "state", enabled=True)
    bad = site.config.model_copy(update={"manifest": tmp_path / "missing-patients.csv"})
    context = node_context(bad, tmp_path / "configs.json", run=2)
    message, arrays = instruction(site, 1)
    reply = client_app(
        Message(encode(message, arrays), dst_node_id=1, message_type="train.represent"), context
    )
    decoded = decode(reply.content, RepresentReply)
    assert decoded.status == "refused" and "missing-patients" not in decoded.reason
    assert decoded.reason.startswith("the site could not take part")


def test_a_mechanism_that_differs_from_the_plan_sends_nothing(
    site_configs, tmp_path: Path, monkeypatch, flower_identity
) -> None:
    from mmfl.client.privacy import dp_sgd as privacy

    site = site_like(site_configs[0], tmp_path / "state", enabled=True)
    monkeypatch.setattr(
        privacy, "run_private_round", lambda *a, **k: [(0.5, 0.01, 3)]
    )  # not what was planned
    with pytest.raises(LedgerError, match="not the charged"):
        site.represent(*instruction(site, 1))
    # Through the ClientApp: a refusal with that reason, and no representation.
    message, arrays = instruction(site, 2)
    sent = Message(encode(message, arrays), dst_node_id=1, message_type=MSG_REPRESENT)
    reply = client_app(sent, node_context(site.config, tmp_path / "sites.json", run=1))
    meta = decode(reply.content, RepresentReply)
    assert meta.status == "refused" and "not the charged" in meta.reason and arrays_of(reply.content) == {}
    ledger = PrivacyLedger(tmp_path / "state", site.spec.id).load()  # charged before the first step
    assert ledger is not None and len(ledger.entries) == 2 and not (tmp_path / "state" / "models").exists()


def test_a_round_that_fails_midway_stays_charged(site_configs, tmp_path: Path, monkeypatch) -> None:
    from mmfl.client.privacy import dp_sgd as privacy

    site = site_like(site_configs[0], tmp_path / "state", enabled=True)

    def fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("out of memory")

    monkeypatch.setattr(privacy, "run_private_round", fails)
    with pytest.raises(RuntimeError):
        site.represent(*instruction(site, 1))
    ledger = PrivacyLedger(tmp_path / "state", site.spec.id).load()
    assert ledger is not None and [e.round for e in ledger.entries] == [1] and ledger.history


def test_the_audit_mod_logs_every_reply_refusals_and_errors_included(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    site = site_like(site_configs[2], tmp_path / "state", enabled=True)
    context = node_context(site.config, tmp_path / "sites.json", run=1)
    message, arrays = instruction(site, 1)
    # A round for another public set: a refusal, with the reason and the site's epsilon.
    other = message.model_copy(update={"public_fingerprint": "0" * 64})
    sent = Message(encode(other, arrays), dst_node_id=1, message_type=MSG_REPRESENT)
    reply = client_app(sent, context)
    meta = decode(reply.content, RepresentReply)
    assert meta.status == "refused" and "fingerprint" in meta.reason and arrays_of(reply.content) == {}
    # A query that does not validate: the handler raises, Flower sends an error reply.
    broken = Message(RecordDict(), dst_node_id=1, message_type=MSG_CAPABILITIES)
    with pytest.raises(Exception, match="meta"):
        client_app(broken, context)
    entries = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(e["message_type"], e["status"], e["round"]) for e in entries] == [
        (MSG_REPRESENT, "refused", 1),
        (MSG_CAPABILITIES, "error", 0),
    ]
    assert entries[0]["run_id"] == "t" and entries[0]["shapes"] == {} and entries[1]["bytes"] == 0


def test_a_ledger_restored_from_a_backup_is_refused_by_the_coordinator(
    site_configs: list[SiteConfig], tmp_path: Path
) -> None:
    """Item 4: a site whose reported spend went back (its ledger restored from a backup) is
    refused at registration and in a round; the run store remembers across runs."""
    import shutil

    from mmfl.server.records import RoundRecord, SiteReport
    from mmfl.server.sites import SiteRegistry
    from mmfl.server.store import RunStore

    site = site_like(site_configs[2], tmp_path / "state", enabled=True, target_epsilon=8.0)
    budget, key = site.budget, site.data.data_key
    with budget.exclusive():  # the noisy count is the first spend (it leaves with round 1)
        budget.open(key, site.data.training_units)
    caps = site.capabilities()
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "state" / "privacy", backup)
    ledger = budget.load()
    for round_ in (1, 2):
        ledger = budget.commit(ledger, budget.plan(ledger, key, 32, 1), "run-a", round_)
    spent = site.privacy_status().epsilon_spent
    assert spent > caps.privacy.epsilon_spent

    engine = open_store(tmp_path / "runs.sqlite")
    first = RunStore(engine, "run-a")
    first.start("a", "cream", "digits", 0, {}, str(tmp_path))
    first.add_site(caps.site_id, {**caps.model_dump(), "identity": f"site:{caps.site_id}"})
    first.add_round(
        RoundRecord(
            round=2, sites=[SiteReport(site_id=caps.site_id, node_id=7, accepted=True, epsilon=spent)]
        )
    )

    shutil.rmtree(tmp_path / "state" / "privacy")
    shutil.copytree(backup, tmp_path / "state" / "privacy")  # the quiet rollback
    again = site.capabilities()
    assert again.privacy.epsilon_spent < spent and again.data_fingerprint == caps.data_fingerprint
    events: list[tuple[str, str]] = []
    store = RunStore(engine, "run-b")
    registry = SiteRegistry(["image", "text"], again.public_fingerprint, lambda k, m: events.append((k, m)))
    registry.sites[7] = again
    registry.refuse_rolled_back(store.highest_epsilon)
    assert registry.sites == {} and events[0][0] == "privacy-rollback"
    assert f"less than the {spent:.4f} it reported in run run-a round 2" in events[0][1]
    # Another site (another name, so another identity) starts with no floor; within a run a
    # report below the last one is refused.
    fresh = again.model_copy(update={"site_id": "another-site"})
    registry.sites[8] = fresh
    registry.refuse_rolled_back(store.highest_epsilon)
    assert 8 in registry.sites
    higher = fresh.privacy.model_copy(update={"epsilon_spent": fresh.privacy.epsilon_spent + 1})
    assert registry.check_spend(8, higher, "in round 1") is None
    assert "went back" in (registry.check_spend(8, fresh.privacy, "in round 2") or "")


def test_a_wiped_state_folder_does_not_reset_the_spend_the_coordinator_knows(
    site_configs: list[SiteConfig], tmp_path: Path
) -> None:
    """Issue 35, defect 4: the coordinator keyed a site's highest epsilon by a fingerprint made
    from ``site.secret``; a wiped state folder gave a new one and the spend restarted from 0
    unnoticed. It is now bound to the site's registered public key: the site is refused until
    its operator carries the spend over, or the coordinator's operator acknowledges it."""
    from datetime import UTC, datetime

    from mmfl.server.records import RoundRecord, SiteReport
    from mmfl.server.sites import SiteRegistry
    from mmfl.server.store import RunStore

    site = site_like(site_configs[2], tmp_path / "state", enabled=True, target_epsilon=8.0)
    reply, _ = site.represent(*instruction(site, 1))
    spent = reply.privacy.epsilon_spent
    engine = open_store(tmp_path / "runs.sqlite")
    first = RunStore(engine, "run-a")
    first.start("a", "cream", "digits", 0, {}, str(tmp_path))
    caps = site.capabilities()
    identity = "key:" + "ab" * 32  # its registered public key's fingerprint
    first.add_site(caps.site_id, {**caps.model_dump(), "identity": identity})
    first.add_round(
        RoundRecord(
            round=1, sites=[SiteReport(site_id=caps.site_id, node_id=7, accepted=True, epsilon=spent)]
        )
    )
    wiped = site_like(site_configs[2], tmp_path / "new-state", enabled=True, target_epsilon=8.0)
    again = wiped.capabilities()
    assert again.privacy.epsilon_spent == 0.0 and again.data_fingerprint != caps.data_fingerprint

    def registry_with(capabilities, acks=None):  # noqa: ANN001, ANN202
        events: list[tuple[str, str]] = []
        registry = SiteRegistry(["image", "text"], again.public_fingerprint, lambda k, m: events.append((k, m)),
                                names={7: caps.site_id}, keys={7: "ab" * 32})  # fmt: skip
        registry.sites[7] = capabilities
        registry.refuse_rolled_back(
            lambda i: RunStore(engine, "run-b").highest_epsilon(i, (acks or {}).get(i))
        )
        return registry, events

    refused, events = registry_with(again)
    assert refused.sites == {} and events[0][0] == "privacy-rollback"
    assert (
        f"ledger-reset --spent {spent:.4f}" in events[0][1] and f"privacy-ack {caps.site_id}" in events[0][1]
    )
    # The site's operator carries the spend over: accepted, nothing forgiven.
    carried = wiped.budget.reset("state folder lost; spend carried from the coordinator's record", spent)
    assert carried.spent() == pytest.approx(spent)
    accepted, _ = registry_with(wiped.capabilities())
    assert 7 in accepted.sites
    # Or the coordinator's operator acknowledges it (recorded with a reason by `privacy-ack`).
    acknowledged, _ = registry_with(again, {identity: datetime.now(UTC)})
    assert 7 in acknowledged.sites


def test_a_raised_budget_is_refused_by_the_coordinator_until_acknowledged(
    site_configs, tmp_path: Path
) -> None:
    """Issue 35, defect 14: a simulated site's ledger has no key, so whoever writes its state
    folder can raise its budget (4 -> 40) and recompute the checksum. The site cannot tell; the
    coordinator can: it remembers the smallest budget each identity declared and refuses a
    raise, forged or made with ``mmfl client ledger-raise``, until its operator acknowledges it."""
    from datetime import UTC, datetime

    from mmfl.server.sites import SiteRegistry
    from mmfl.server.store import RunStore

    site = site_like(site_configs[2], tmp_path / "state", enabled=True, target_epsilon=4.0)
    site.represent(*instruction(site, 1))
    engine = open_store(tmp_path / "runs.sqlite")
    first = RunStore(engine, "run-a")
    first.start("a", "cream", "digits", 0, {}, str(tmp_path))
    caps = site.capabilities()
    first.add_site(caps.site_id, {**caps.model_dump(), "identity": "site:" + caps.site_id})
    site.budget.raise_budget(40.0, "forged or raised: the coordinator cannot tell which")
    raised = site_like(site_configs[2], tmp_path / "state", enabled=True, target_epsilon=40.0).capabilities()
    assert raised.privacy.target_epsilon == 40.0

    def registry_with(capabilities, acks=None):  # noqa: ANN001, ANN202
        events: list[tuple[str, str]] = []
        registry = SiteRegistry(["image", "text"], raised.public_fingerprint, lambda k, m: events.append((k, m)),
                                names={7: caps.site_id})  # fmt: skip
        registry.sites[7] = capabilities
        store = RunStore(engine, "run-b")
        registry.refuse_rolled_back(
            lambda i: store.highest_epsilon(i, (acks or {}).get(i)),
            lambda i: store.lowest_budget(i, (acks or {}).get(i)),
        )
        return registry, events

    refused, events = registry_with(raised)
    assert refused.sites == {} and [k for k, _ in events] == ["privacy-budget-raised"]
    assert "budget of 40, above the 4" in events[0][1] and f"privacy-ack {caps.site_id}" in events[0][1]
    unchanged, events = registry_with(caps)
    assert 7 in unchanged.sites and events == []
    acknowledged, events = registry_with(raised, {"site:" + caps.site_id: datetime.now(UTC)})
    assert 7 in acknowledged.sites and events == []
