"""The site's own policy (issue 35): enforced before any work, read or privacy charge, every
refusal naming the key and the value asked for; fuzzed over the coordinator's instruction space."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import instruction, mmfl_cli, node_context, small_spec
from mmfl.client.app import app as client_app
from mmfl.client.policy import PolicyRefusal
from mmfl.client.privacy.ledger import PrivacyLedger
from mmfl.client.site import Site
from mmfl.config import SiteConfig, SitePolicy, dump_toml
from mmfl.protocols.messages import MSG_REPRESENT, MixPlan, RepresentReply
from mmfl.protocols.records import decode, encode
from mmfl.simulation.plan import build_plan


@pytest.fixture(scope="module")
def pair_config(digits, tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    plan = build_plan(small_spec(), tmp_path_factory.mktemp("sites"))
    return [SiteConfig.model_validate(c) for c in json.loads(Path(plan.site_configs).read_text())][2]


def with_policy(config: SiteConfig, state: Path, dp: bool = False, **policy: object) -> SiteConfig:
    spec = config.site.model_copy(
        update={
            "policy": SitePolicy(**policy),
            "privacy": config.site.privacy.model_copy(update={"enabled": dp, "target_epsilon": 8.0}),
        }
    )
    return config.model_copy(update={"site": spec, "state_dir": state})


def asked(site: Site, **change: object):  # noqa: ANN201
    message, arrays = instruction(site, 1, n=50)
    settings_change = {k: v for k, v in change.items() if k in message.settings.model_fields}
    other = {k: v for k, v in change.items() if k not in settings_change}
    return message.model_copy(
        update={"settings": message.settings.model_copy(update=settings_change), **other}
    ), arrays


CASES = [
    ({"max_local_epochs": 2}, {"local_epochs": 3}, "site policy: max_local_epochs is 2; the coordinator asked for 3 local epochs"),
    ({"max_batch_size": 16}, {"batch_size": 32}, "max_batch_size is 16; the coordinator asked for 32 as the batch size"),
    ({"min_batch_size": 64}, {"batch_size": 32}, "min_batch_size is 64; the coordinator asked for 32 as the batch size"),
    ({"max_public_items": 10}, {}, "max_public_items is 10; the coordinator asked for 50 public rows"),
    ({"max_reply_mb": 0.01}, {}, "max_reply_mb is 0.01; the coordinator asked for 0.1 MB in its reply"),
    ({"accept": ["weights"]}, {}, "accept is [weights]; the coordinator asked for represent work"),
    ({"max_steps_per_round": 3}, {"local_epochs": 2}, "max_steps_per_round is 3; the coordinator asked for"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "change", "reason"), CASES, ids=[c[0] and next(iter(c[0])) for c in CASES]
)
def test_a_refusal_names_the_key_and_value_and_reads_no_data(
    pair_config: SiteConfig, tmp_path: Path, policy: dict, change: dict, reason: str
) -> None:
    site = Site(with_policy(pair_config, tmp_path / "state", **policy))
    message, arrays = asked(site, **change)
    site = Site(site.config)  # fresh: nothing loaded yet
    started = time.perf_counter()
    with pytest.raises(PolicyRefusal, match=reason.replace("[", r"\[").replace("]", r"\]")):
        site.represent(message, arrays)
    assert time.perf_counter() - started < 1.0
    loaded = set(site.data.__dict__)
    assert not loaded & {"public", "_split", "public_manifest"}, loaded  # no feature, no file
    assert not (tmp_path / "state" / "models").exists()


def test_a_mix_plan_beyond_the_policy_is_refused(pair_config: SiteConfig, tmp_path: Path) -> None:
    site = Site(with_policy(pair_config, tmp_path / "state", max_mixed_items=4))
    message, _ = asked(site)
    plan = MixPlan(first=[0] * 5, second=[1] * 5, weight={"image": [0.5] * 5, "text": [0.5] * 5})
    with pytest.raises(PolicyRefusal, match="max_mixed_items is 4; the coordinator asked for 5 mixed items"):
        site.represent(message.model_copy(update={"mix": plan, "rows": {}}), {})
    regress_off = Site(with_policy(pair_config, tmp_path / "other", accept=["represent"]))
    with pytest.raises(
        PolicyRefusal, match=r"accept is \[represent\]; the coordinator asked for regress work"
    ):
        regress_off.represent(message.model_copy(update={"mix": plan, "rows": {}}), {})


def test_policy_show_prints_every_key_and_require_dp_is_checked(
    pair_config: SiteConfig, tmp_path: Path
) -> None:
    config = with_policy(pair_config, tmp_path / "state", max_local_epochs=2, release_final_model=True)
    path = tmp_path / "site.toml"
    path.write_text(dump_toml(config))
    shown = mmfl_cli("client", "policy", "show", "--config", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == config.site.policy.model_dump(mode="json")
    table = mmfl_cli("client", "policy", "show", "--config", str(path))
    assert "max_local_epochs" in table.stdout and "release_final_model" in table.stdout
    bad = path.read_text().replace("require_dp = false", "require_dp = true")
    path.write_text(bad)
    refused = mmfl_cli("client", "policy", "show", "--config", str(path))
    assert (
        refused.returncode == 2 and "policy.require_dp is true but privacy.enabled is false" in refused.stderr
    )


# -- the coordinator's instruction space, fuzzed against a real DP site --------------------------

POLICY = {
    "max_local_epochs": 1,
    "min_batch_size": 8,
    "max_batch_size": 64,
    "max_public_items": 40,
    "max_mixed_items": 40,
    "max_reply_mb": 0.05,
}


@pytest.fixture(scope="module")
def dp_node(pair_config: SiteConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, Context, Path]:
    state = tmp_path_factory.mktemp("dp-state")
    config = with_policy(pair_config, state, dp=True, **POLICY)
    context = node_context(config, tmp_path_factory.mktemp("node") / "sites.json")
    return Site(config), context, state


def within_policy(m) -> bool:  # noqa: ANN001
    s = m.settings
    rows = len(m.mix.first) if m.mix is not None else max((len(r) for r in m.rows.values()), default=0)
    reply_mb = 2 * rows * m.embed_dim * {"float32": 4, "float16": 2, "int8": 1}[s.payload_dtype] / 2**20
    return (
        s.local_epochs <= POLICY["max_local_epochs"]
        and POLICY["min_batch_size"] <= s.batch_size <= POLICY["max_batch_size"]
        and len(m.public_indices) <= POLICY["max_public_items"]
        and (m.mix is None or len(m.mix.first) <= POLICY["max_mixed_items"])
        and reply_mb <= POLICY["max_reply_mb"] * (1 + 1e-9)
    )


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    epochs=st.integers(0, 3),
    batch=st.sampled_from([1, 4, 8, 32, 64, 65, 4096]),
    n_public=st.sampled_from([0, 1, 20, 40, 41, 200]),
    mixed=st.sampled_from([None, 2, 40, 41, 500]),
    dtype=st.sampled_from(["float32", "float16", "int8"]),
    regularisers=st.booleans(),
    public_pairs=st.booleans(),
    embed_dim=st.sampled_from([256, 512]),
)
def test_every_instruction_is_refused_with_a_reason_or_run_within_the_policy(
    dp_node, epochs, batch, n_public, mixed, dtype, regularisers, public_pairs, embed_dim, flower_identity
) -> None:  # noqa: ANN001
    site, context, state = dp_node
    message, arrays = instruction(site, 1, n=n_public)
    rows = message.rows
    mix = None
    if mixed is not None:
        mix = MixPlan(
            first=[i % 50 for i in range(mixed)],
            second=[(i + 1) % 50 for i in range(mixed)],
            weight={m: [0.5] * mixed for m in ("image", "text")},
        )
        rows, arrays = {}, {}
    if embed_dim != 256:
        arrays = {m: np.repeat(a, 2, axis=1) / np.sqrt(2) for m, a in arrays.items()}
    message = message.model_copy(
        update={
            "rows": rows,
            "mix": mix,
            "embed_dim": embed_dim,
            "round": 1 + int(time.monotonic_ns() % 10**6),
            "settings": message.settings.model_copy(
                update={
                    "local_epochs": epochs,
                    "batch_size": batch,
                    "payload_dtype": dtype,
                    "regularisers": regularisers,
                    "public_pairs": public_pairs,
                }
            ),
        }
    )
    ledger = PrivacyLedger(state, site.spec.id)
    before = (ledger.load().spent() if ledger.load() else 0.0) if ledger.exists() else 0.0
    sent = Message(encode(message, arrays), dst_node_id=1, message_type=MSG_REPRESENT)
    reply = decode(client_app(sent, context).content, RepresentReply)  # never an uncaught error
    after = ledger.load().spent() if ledger.exists() else 0.0
    if reply.status == "refused":
        assert reply.reason
        # the one charge a refusal may follow: none; the only accounted spend is a trained round
        assert after == pytest.approx(before, abs=1e-12), (reply.reason, before, after)
    else:
        assert within_policy(message), message
