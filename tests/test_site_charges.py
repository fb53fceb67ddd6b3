"""A refused instruction never costs privacy, and a fault never costs the budget (issue 35,
defects 2, 3, 7, 8 and 9): each test reproduces what an outside test did to a real site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from helpers import instruction, node_context, small_spec
from mmfl.client.app import app as client_app
from mmfl.client.app import site_for
from mmfl.client.privacy.audit import read as read_audit
from mmfl.client.privacy.ledger import LedgerError, PrivacyLedger
from mmfl.client.site import Site
from mmfl.config import SiteConfig
from mmfl.protocols.messages import (
    MSG_CAPABILITIES,
    MSG_REPRESENT,
    Capabilities,
    CapabilitiesQuery,
    MixPlan,
    RepresentReply,
)
from mmfl.protocols.records import decode, encode
from mmfl.simulation.plan import build_plan


@pytest.fixture(scope="module")
def site_configs(digits, tmp_path_factory: pytest.TempPathFactory) -> list[SiteConfig]:
    plan = build_plan(small_spec(), tmp_path_factory.mktemp("sites"))
    return [SiteConfig.model_validate(c) for c in json.loads(Path(plan.site_configs).read_text())]


def dp_site(config: SiteConfig, state: Path, **privacy: object) -> Site:
    privacy = {"enabled": True, "target_epsilon": 4.0, **privacy}
    spec = config.site.model_copy(update={"privacy": config.site.privacy.model_copy(update=privacy)})
    return Site(config.model_copy(update={"site": spec, "state_dir": state}))


def plain_site(config: SiteConfig, state: Path) -> Site:
    return Site(config.model_copy(update={"state_dir": state}))


def context_of(site: Site, folder: Path) -> Context:
    """The Flower context of a simulated node that is ``site`` (one configuration file per site)."""
    return node_context(site.config, folder / f"{site.spec.id}-{abs(hash(str(site.config.state_dir)))}.json")


def send_represent(site: Site, context: Context, message, arrays) -> RepresentReply:  # noqa: ANN001
    sent = Message(encode(message, arrays), dst_node_id=1, message_type=MSG_REPRESENT)
    return decode(client_app(sent, context).content, RepresentReply)


def ask_capabilities(site: Site, context: Context) -> Capabilities:
    query = CapabilitiesQuery(run_id="t", public_fingerprint=site.data.public_manifest.fingerprint())
    sent = Message(encode(query), dst_node_id=1, message_type=MSG_CAPABILITIES)
    return decode(client_app(sent, context).content, Capabilities)


def wrong_public_set(site: Site, round_: int = 1):  # noqa: ANN201
    message, arrays = instruction(site, round_)
    return message.model_copy(update={"public_fingerprint": "0" * 64}), arrays


def test_a_refusal_before_any_capabilities_query_does_not_lock_a_fresh_dp_site(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    """Defect 3: the refusal's audit line made the site believe it had spent privacy without a
    ledger; it then locked itself at the whole budget, even after a reset with ``--spent 0``."""
    site = dp_site(site_configs[2], tmp_path / "state")
    context = context_of(site, tmp_path)
    refused = send_represent(site, context, *wrong_public_set(site))
    assert refused.status == "refused" and "fingerprint" in refused.reason
    assert refused.privacy.epsilon_spent == 0.0
    (entry,) = read_audit(tmp_path / "state")
    assert entry.status == "refused" and entry.epsilon_after is None  # a refusal records no spend
    caps = ask_capabilities(site, context)
    assert caps.privacy.epsilon_spent == 0.0 and not caps.privacy.ledger_locked
    ok = send_represent(site, context, *instruction(site, 1))
    assert ok.status == "ok" and 0 < ok.privacy.epsilon_spent < 4.0


def test_a_damaged_ledger_declares_no_spend_and_a_reset_recovers_the_journals(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    """Defect 2: refusals of a damaged ledger declared the whole budget spent, the audit log
    recorded it, and ``ledger-reset`` took that as the floor (a journal at 3.29 of 4 came out
    at 4.0 of 4). Now the refusal declares the ledger locked, records no spend, and the reset
    recovers the journal's true spend."""
    site = dp_site(site_configs[2], tmp_path / "state")
    context = context_of(site, tmp_path)
    spent = [send_represent(site, context, *instruction(site, r)).privacy.epsilon_spent for r in (1, 2)]
    assert 0 < spent[0] < spent[1] < 4.0
    ledger_file = tmp_path / "state" / "privacy" / "ledger.json"
    ledger_file.write_text(ledger_file.read_text().replace('"budget": 4.0', '"budget": 40.0'))  # damage
    refused = send_represent(site, context, *instruction(site, 3))
    assert refused.status == "refused" and "checksum" in refused.reason
    assert refused.privacy.ledger_locked and refused.privacy.epsilon_spent is None
    caps = ask_capabilities(site, context)
    assert caps.privacy.ledger_locked and caps.privacy.epsilon_spent is None
    entries = read_audit(tmp_path / "state")
    assert [e.epsilon_after for e in entries] == [spent[0], spent[1], None, None]
    reset = site.budget.reset("damaged by a test")
    assert reset.spent() == pytest.approx(spent[1], abs=1e-9) and reset.budget == 4.0
    assert send_represent(site, context, *instruction(site, 3)).privacy.epsilon_spent > spent[1]


def test_a_reset_ignores_the_whole_budget_that_older_refusals_declared(site_configs, tmp_path: Path) -> None:
    """Audit logs written before the fix hold refusal lines declaring the whole budget: a
    reset reads only what the site released (``ok`` replies)."""
    from mmfl.client.privacy import audit

    site = dp_site(site_configs[2], tmp_path / "state")
    ledger = site.budget.open(site.data.data_key, site.data.training_units)
    ledger = site.budget.commit(ledger, site.budget.plan(ledger, site.data.data_key, 32, 1), "r", 1)
    true_spend = ledger.spent()
    audit.append(tmp_path / "state", MSG_REPRESENT, "r", 1, "ok", RecordDict(), true_spend)
    audit.append(tmp_path / "state", MSG_REPRESENT, "r", 2, "refused", RecordDict(), 4.0)  # as before
    (tmp_path / "state" / "privacy" / "ledger.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(LedgerError):
        site.budget.load()
    assert site.budget.reset("checksum lost").spent() == pytest.approx(true_spend, abs=1e-9)


def test_capabilities_spend_nothing_the_count_leaves_with_the_first_round(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    """Defect 7: a DP site refused at discovery had spent its count epsilon (0.05) answering
    the capabilities query. The noisy count now leaves with the first round it trains."""
    site = dp_site(site_configs[0], tmp_path / "state")
    context = context_of(site, tmp_path)
    caps = ask_capabilities(site, context)
    assert caps.privacy.epsilon_spent == 0.0 and caps.privacy.noisy_units is None
    assert PrivacyLedger(tmp_path / "state", site.spec.id).load() is None  # nothing written
    reply = send_represent(site, context, *instruction(site, 1))
    assert reply.status == "ok" and reply.privacy.noisy_units is not None
    ledger = PrivacyLedger(tmp_path / "state", site.spec.id).load()
    assert ledger is not None and len(ledger.count_releases) == 1


def test_a_bad_mix_plan_is_refused_before_anything_is_charged(
    site_configs, tmp_path: Path, flower_identity
) -> None:
    """Defect 8: the regress mix plan was checked after training, so a bad plan cost a
    round's epsilon and was then refused."""
    site = dp_site(site_configs[2], tmp_path / "state")
    context = context_of(site, tmp_path)
    message, _ = instruction(site, 1)
    served = site_for(context)  # the Site the ClientApp serves this node with
    served.data.public.present["text"][7] = False  # its copy only: public row 7 lost its text
    bad = MixPlan(first=[7, 0], second=[0, 1], weight={"image": [0.5, 0.5], "text": [0.5, 0.5]})
    reply = send_represent(site, context, message.model_copy(update={"mix": bad, "rows": {}}), {})
    assert reply.status == "refused" and "mix plan" in reply.reason
    assert reply.privacy.epsilon_spent == 0.0
    assert PrivacyLedger(tmp_path / "state", site.spec.id).load() is None


@pytest.mark.parametrize(
    "case",
    ["empty public subset with regularisers", "batch of one on a paired site"],
)
def test_schema_valid_instructions_that_cannot_train_are_refused_with_a_reason(
    site_configs, tmp_path: Path, flower_identity, case: str
) -> None:
    """Defect 9: these crashed a non-DP site's handler (NaN metrics failed the reply's schema)."""
    site = plain_site(site_configs[2], tmp_path / "state")
    context = context_of(site, tmp_path)
    message, arrays = instruction(site, 1)
    if case.startswith("empty"):
        message = message.model_copy(update={"public_indices": [], "rows": {"image": [], "text": []}})
        arrays = {m: a[:0] for m, a in arrays.items()}
        expected = "public"
    else:
        message = message.model_copy(
            update={"settings": message.settings.model_copy(update={"batch_size": 1})}
        )
        expected = "batch_size"
    reply = send_represent(site, context, message, arrays)
    assert reply.status == "refused" and expected in reply.reason
    assert not (tmp_path / "state" / "models").exists()  # refused before any work


def test_centralized_refuses_to_pool_a_dp_sites_rows(digits, tmp_path: Path) -> None:
    """Defect 6: ``centralized`` pooled a DP site's rows without DP and recorded nothing."""
    from mmfl.errors import MmflError

    spec = small_spec('strategy="centralized"', "sites.1.privacy.enabled=true")
    with pytest.raises(MmflError, match="site txt has privacy.enabled: a DP site's rows never leave it"):
        build_plan(spec, tmp_path / "pooled")
    assert not (tmp_path / "pooled").exists()  # refused before anything was written
