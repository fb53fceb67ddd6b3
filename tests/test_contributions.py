"""Leave-one-site-out (benchmarks/quality/contributions.py): a site is left out after the partition is
drawn, so every other site holds exactly its rows of the full run; a refused site is 0 by
construction."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load_benchmark, small_spec
from mmfl.simulation.plan import build_plan


def test_leaving_a_site_out_keeps_the_others_rows(digits, tmp_path: Path) -> None:
    contributions = load_benchmark("contributions")
    spec = small_spec('strategy="cream+"')
    build_plan(spec, tmp_path / "all")
    build_plan(spec, tmp_path / "without", force=True)
    contributions.without(tmp_path / "without", "pair-a")
    configs = {
        c["site"]["id"]: c for c in json.loads((tmp_path / "without" / "site_configs.json").read_text())
    }
    assert sorted(configs) == ["img", "pair-b", "txt"]
    assert json.loads((tmp_path / "without" / "plan.json").read_text())["expected_sites"] == 3
    for site in configs:
        same = (tmp_path / "all" / "sites" / site / "data.jsonl").read_text()
        assert (tmp_path / "without" / "sites" / site / "data.jsonl").read_text() == same


def test_a_site_the_method_refuses_contributes_nothing_by_construction() -> None:
    contributions = load_benchmark("contributions")
    assert contributions.refused(small_spec('strategy="regress"')) == {
        "img": "refused by regress.sites = paired",
        "txt": "refused by regress.sites = paired",
    }
    assert contributions.refused(small_spec('strategy="cream+"')) == {}
