"""``benchmarks/quality/quality.py`` reads the offline control from a transfer_bound result file."""

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


def _run(
    strategy: str, seed: int, test: float, val: float, ensemble: tuple[float, float] | None = None
) -> dict:
    summary: dict = {
        "strategy": strategy,
        "seed": seed,
        "final": {"retrieval": {"rsum": test}, "val_retrieval": {"rsum": val}},
    }
    if ensemble is not None:
        summary["delivery"] = {
            "candidates": [
                {"strategy": strategy, "source": "federation", "val_rsum": val, "test_rsum": test},
                {
                    "strategy": "ensemble",
                    "source": "ensemble",
                    "val_rsum": ensemble[1],
                    "test_rsum": ensemble[0],
                },
            ],
            "ensemble": {"sites": ["a", "b"]},
        }
    return summary


def test_the_delivered_model_is_chosen_on_val_among_the_server_the_ensemble_and_the_controls() -> None:
    quality = load_benchmark("quality")
    runs = [
        _run("regress", 0, 107.0, 150.0, ensemble=(126.0, 170.0)),  # the ensemble wins on val
        _run("regress", 1, 107.0, 150.0, ensemble=(140.0, 140.0)),  # best on test, worst on val
        _run("server-only", 0, 90.0, 130.0),
        _run("server-only", 1, 90.0, 155.0),  # the control wins seed 1 on val
    ]
    got = {(d["strategy"], d["seed"]): d for d in quality.deliverables(runs)}
    assert got["regress ensemble", 0]["final"]["retrieval"]["rsum"] == 126.0
    assert got["regress ensemble", 0]["members"] == ["a", "b"]
    assert got["regress delivered", 0]["chosen"] == "regress ensemble"
    assert got["regress delivered", 1]["chosen"] == "server-only"
    assert got["regress delivered", 1]["final"]["retrieval"]["rsum"] == 90.0  # test never chooses
    # paired like any federated run, against the strongest control by val
    rows = quality.paired_rows([*runs, *got.values()])
    delivered = next(r for r in rows if r["treated"] == "regress delivered" and r["control"] == "server-only")
    assert delivered["per_seed"] == [36.0, 0.0]
    # a run without released models has no deliverable
    assert quality.deliverables([_run("regress", 0, 107.0, 150.0)]) == []
