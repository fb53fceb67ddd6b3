"""The site-free controls of a federation and the paired statistics every quality table uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import as_json, small_spec, tiny_summary
from mmfl.config import SiteConfig
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import PreparedDataset
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.paired import gap_closed, paired_difference, sample_std
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import best_val_round, comparison_table
from mmfl.strategies.methods import METHODS


def test_paired_difference_is_students_t_over_the_shared_seeds() -> None:
    d = paired_difference("fed", "ctl", {0: 11.0, 1: 12.0, 2: 13.0, 9: 50.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert d.seeds == [0, 1, 2] and d.per_seed == [1.0, 2.0, 3.0]
    assert d.mean == 2.0 and d.sd == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2)
    assert d.ci_low == pytest.approx(2.0 - half) and d.ci_high == pytest.approx(2.0 + half)
    assert not d.significant  # 2 - 2.48 < 0
    one = paired_difference("fed", "ctl", {0: 3.0}, {0: 1.0})
    assert one.mean == 2.0 and one.sd is None and one.ci_low is None and not one.significant
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference("fed", "ctl", {0: 1.0}, {1: 1.0})


def test_gap_closed_and_sample_std() -> None:
    assert gap_closed(110.0, 100.0, 120.0) == 0.5
    assert gap_closed(95.0, 100.0, 120.0) == -0.25
    assert gap_closed(110.0, 100.0, 100.0) is None
    assert sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # ddof 1, not the population's 0.816
    assert sample_std([4.0]) is None


def test_comparison_reports_best_val_round_and_sample_std() -> None:
    a = tiny_summary("cream+", 0, [(10.0, 1.0), (30.0, 5.0), (20.0, 9.0)])
    b = tiny_summary("cream+", 1, [(40.0, 7.0), (40.0, 8.0), (30.0, 2.0)])
    assert best_val_round(a) == (2, 5.0) and best_val_round(b) == (1, 7.0)  # first round on ties
    (row,) = comparison_table([a, b])
    assert row["test_rsum_mean"] == 5.5 and row["test_rsum_std"] == pytest.approx(math.sqrt(24.5))
    assert row["best_val_test_rsum_mean"] == 6.0 and row["best_val_rounds"] == [2, 1]


def test_controls_reproduce_cream_plus_without_any_site_data() -> None:
    plus = METHODS["cream+"]
    for name in ("site-free", "public-teachers"):
        control = METHODS[name]
        assert control.control_of == "cream+"
        assert control.cream_defaults == plus.cream_defaults and control.ensemble == plus.ensemble
        assert control.server_data == plus.server_data
    assert not METHODS["site-free"].uses_sites and METHODS["site-free"].self_targets
    assert METHODS["public-teachers"].site_data == "public"


def test_every_method_is_a_strategy_summaries_may_carry() -> None:
    from mmfl.simulation.report import summary_schema

    assert set(summary_schema()["properties"]["strategy"]["enum"]) == set(METHODS)


def test_public_teachers_sites_hold_the_public_set_and_nothing_private(digits, tmp_path: Path) -> None:
    build_plan(small_spec('strategy="public-teachers"'), tmp_path / "run")
    ds = PreparedDataset(digits.root)
    public = {s.id: s for s in ds.manifest("public").samples}
    private = {s.id for s in ds.manifest("private").samples}
    configs = [
        SiteConfig.model_validate(c) for c in json.loads((tmp_path / "run" / "site_configs.json").read_text())
    ]
    assert len(configs) == 4
    for cfg in configs:
        held = load_manifest(cfg.manifest, ds.info.modalities).samples
        assert not {s.id for s in held} & private
        assert {s.id for s in held} == {
            i for i, s in public.items() if set(cfg.site.modalities) & set(s.values)
        }
        for s in held:
            assert set(s.values) <= set(cfg.site.modalities)
            assert all(public[s.id].values[m] == v for m, v in s.values.items())


def test_site_free_control_distils_toward_its_own_representations(digits, tmp_path: Path) -> None:
    summary = as_json(run_inprocess(build_plan(small_spec('strategy="site-free"'), tmp_path / "run")))
    assert summary["sites"] == [] and json.loads((tmp_path / "run" / "site_configs.json").read_text()) == []
    for r in summary["rounds"]:
        assert r["status"] == "completed" and r["sites"] == []
        assert r["bytes_down"] == r["bytes_up"] == 0
        assert math.isfinite(r["server_metrics"]["distill_loss"])
    assert summary["final"]["retrieval"]["rsum"] > 0


def test_simulate_compare_pairs_every_federation_with_every_site_free_run() -> None:
    """``mmfl simulate compare`` reports each federation minus each site-free run by seed, and
    marks the strongest of those by val (never by test)."""
    from mmfl.simulation.report import compare_with_site_free

    def run(strategy: str, seed: int, test: float, val: float):  # noqa: ANN202
        return tiny_summary(strategy, seed, [(val, test)])

    summaries = [
        run("regress", 0, 110.0, 150.0),
        run("regress", 1, 108.0, 148.0),
        run("server-only", 0, 90.0, 130.0),
        run("server-only", 1, 92.0, 131.0),
        run("regress-public", 0, 100.0, 129.0),  # stronger on test, weaker on val
        run("regress-public", 1, 101.0, 128.0),
        run("centralized", 0, 130.0, 170.0),
        run("centralized", 1, 130.0, 170.0),
    ]
    rows = {(r["treated"], r["control"]): r for r in compare_with_site_free(summaries)}
    assert set(rows) == {("regress", "server-only"), ("regress", "regress-public")}  # no ceiling, no control
    best = rows["regress", "server-only"]
    assert best["strongest_by_val"] and not rows["regress", "regress-public"]["strongest_by_val"]
    assert (
        best["per_seed"] == [20.0, 16.0] and best["mean"] == 18.0 and best["ci_low"] < 18.0 < best["ci_high"]
    )
    assert best["gap_closed"] == pytest.approx(18.0 / 39.0)
