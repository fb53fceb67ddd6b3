"""summary.json's typed record: the published schema is the model's, a bad file is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import tiny_summary
from mmfl.errors import MmflError
from mmfl.protocols.summary import RunSummary, summary_json_schema
from mmfl.simulation.report import summary_schema


def test_the_published_schema_is_generated_from_the_typed_record() -> None:
    """``mmfl/schemas/summary.schema.json`` is what :class:`RunSummary` says (after a change,
    regenerate it with ``python -m mmfl.protocols.summary``)."""
    assert summary_schema() == json.loads(json.dumps(summary_json_schema()))


def test_a_summary_round_trips_and_leaves_missing_metrics_out(tmp_path: Path) -> None:
    summary = tiny_summary("regress", 3, [(10.0, 5.0), (12.0, 6.5)])
    (tmp_path / "summary.json").write_text(summary.to_json())
    again = RunSummary.read(tmp_path)
    assert again == summary and again.final.test_rsum == 6.5 and again.final.val_rsum == 12.0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["rounds"][0]["server_metrics"] == {"val": {"rsum": 10.0}, "test": {"rsum": 5.0}}
    assert again.delivered == "regress" and again.dp_sites == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("final"), "final: Field required"),
        (
            lambda d: d["rounds"][0]["server_metrics"]["test"].update(rsum=601.0),
            "rounds.0.server_metrics.test.rsum",
        ),
        (lambda d: d.update(strategy="nonsense"), "strategy: Input should be"),
        (lambda d: d.update(extra_key=1), "extra_key: Extra inputs are not permitted"),
    ],
)
def test_a_bad_summary_is_one_line_naming_the_file_and_the_field(tmp_path: Path, change, reason: str) -> None:  # noqa: ANN001
    data = json.loads(tiny_summary("regress", 0, [(10.0, 5.0)]).to_json())
    change(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MmflError) as caught:
        RunSummary.read(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and reason in message
    assert RunSummary.read_if_done(tmp_path) is None


def test_a_missing_summary_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MmflError, match=r"^cannot read .*summary\.json"):
        RunSummary.read(tmp_path)
