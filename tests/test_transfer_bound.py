"""``benchmarks/quality/transfer_bound.py``: seeds run side by side are merged only when they ran alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_benchmark

SETTINGS = {"epochs": 30, "teacher_epochs": 10, "transfers": ["regress"], "regress_epochs": 300}


def _write(path: Path, settings: dict, seeds: list[int]) -> Path:
    results = {str(s): {"teachers": {}, "students": {"server-only": {"test": 80.0 + s}}} for s in seeds}
    path.write_text(json.dumps({"settings": {**settings, "seeds": "x", "threads": 1}, "results": results}))
    return path


def test_merge_takes_the_seeds_of_a_run_with_the_same_settings(tmp_path: Path) -> None:
    tb = load_benchmark("transfer_bound")
    got = tb.merged_results(_write(tmp_path / "a.json", SETTINGS, [1, 2]), SETTINGS)
    assert sorted(got) == [1, 2] and got[2]["students"]["server-only"]["test"] == 82.0


def test_merge_refuses_a_run_with_other_settings_naming_them(tmp_path: Path) -> None:
    tb = load_benchmark("transfer_bound")
    other = _write(tmp_path / "b.json", {**SETTINGS, "regress_epochs": 100}, [3])
    with pytest.raises(SystemExit, match=r"b\.json: ran with other settings \(regress_epochs\)"):
        tb.merged_results(other, SETTINGS)


def test_merge_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    tb = load_benchmark("transfer_bound")
    for name, text in (("c.json", '{"rows": []}'), ("d.json", '{"settings": [1], "results": {}}')):
        bad = tmp_path / name
        bad.write_text(text)
        with pytest.raises(SystemExit, match=rf"{name[0]}\.json: not a transfer_bound result file"):
            tb.merged_results(bad, SETTINGS)
