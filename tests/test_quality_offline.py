"""``benchmarks/quality.py`` reads the offline control from a transfer_bound result file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_benchmark


def _result(path: Path, passes: int, tests: dict[int, float]) -> Path:
    results = {
        str(seed): {"students": {"public/regress": {"test": t, "val": t + 40}, "sites/regress": {"test": 0}}}
        for seed, t in tests.items()
    }
    path.write_text(json.dumps({"settings": {"regress_epochs": passes}, "results": results}))
    return path


def test_the_offline_control_is_read_per_seed_with_its_passes(tmp_path: Path) -> None:
    quality = load_benchmark("quality")
    got = quality.offline_control(
        "openclipart-paired", _result(tmp_path / "tb.json", 300, {0: 109.5, 3: 111.0})
    )
    assert [(o["seed"], o["passes"], o["final"]["retrieval"]["rsum"]) for o in got] == [
        (0, 300, 109.5),
        (3, 300, 111.0),
    ]
    assert got[1]["final"]["val_retrieval"]["rsum"] == 151.0
    assert got[0]["strategy"] == quality.OFFLINE_CONTROL
    # digits has no offline control: its three modalities are not the transfer bound's
    assert quality.offline_control("digits", tmp_path / "tb.json") == []


def test_a_named_offline_control_file_must_exist_and_be_a_result(tmp_path: Path) -> None:
    quality = load_benchmark("quality")
    assert quality.offline_control("openclipart", tmp_path / "absent.json") == []  # the default may be absent
    with pytest.raises(SystemExit, match=r"absent\.json: no such transfer_bound result file"):
        quality.offline_control("openclipart", tmp_path / "absent.json", required=True)
    bad = tmp_path / "quality.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(SystemExit, match=r"quality\.json: not a transfer_bound result file"):
        quality.offline_control("openclipart", bad, required=True)
