"""A run delivers the better on val of the federation's model and the coordinator's site-free
controls, says which and with what gain, and never hides a federation that lost (issue 34)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import small_spec
from mmfl.protocols.delivery import Candidate, Delivery


def cand(strategy: str, val: float | None, test: float | None, source: str = "control") -> Candidate:
    return Candidate(strategy=strategy, source=source, val_rsum=val, test_rsum=test, folder=strategy)


def test_the_better_on_val_is_delivered_and_a_loss_is_said_plainly() -> None:
    federation = cand("regress", 120.0, 150.0, "federation")
    lost = Delivery.choose(
        federation, [cand("server-only", 130.0, 140.0), cand("regress-public", 125.0, 160.0)]
    )
    assert (lost.delivered, lost.source, lost.strongest_control) == ("server-only", "control", "server-only")
    assert lost.gain_val == -10.0 and lost.gain_test == 10.0  # test is reported, never used to choose
    assert "lost to the coordinator alone: -10.0 val rsum" in lost.line
    won = Delivery.choose(federation, [cand("server-only", 100.0, 110.0)])
    assert (won.delivered, won.source, won.gain_val) == ("regress", "federation", 20.0)
    assert "gained +20.0 val rsum, test +40.0 over the coordinator alone (server-only)" in won.line
    tie = Delivery.choose(federation, [cand("server-only", 120.0, 999.0)])
    assert tie.delivered == "regress"  # a tie keeps the federation's model
    nothing = Delivery.choose(federation, [cand("server-only", None, None)])
    assert not nothing.selection and nothing.delivered == "regress"


def test_a_federation_built_to_lose_delivers_the_coordinators_model(digits, tmp_path: Path) -> None:
    """Sites that learn nothing useful (a learning rate of 10) against the same server alone:
    the run delivers server-only's model, keeps the federation's beside it, and says it lost."""
    from mmfl.inference import load
    from mmfl.protocols.summary import RunSummary
    from mmfl.simulation.engines import run_inprocess
    from mmfl.simulation.plan import build_plan
    from mmfl.simulation.report import write_report

    spec = small_spec('strategy="regress"', "rounds=1", "train.lr=10.0", "delivery.select=true")
    out = tmp_path / "lose"
    summary = run_inprocess(build_plan(spec, out))
    assert RunSummary.read(out) == summary  # what the run returns is what it wrote
    delivery = summary.delivery
    assert delivery is not None
    by_name = {c.strategy: c for c in delivery.candidates}
    assert list(by_name) == ["regress", "server-only", "regress-public"]
    best = max(delivery.candidates, key=lambda c: c.val_rsum or 0.0)
    assert best.source == "control", "the case is built so that the federation loses on val"
    assert delivery.delivered == best.strategy and delivery.gain_val is not None and delivery.gain_val < 0
    assert "lost to the coordinator alone" in delivery.line
    # The delivered bytes are the control's; the federation's model is kept beside them.
    control_dir = out / best.folder
    assert (out / "final_model.pt").read_bytes() == (control_dir / "final_model.pt").read_bytes()
    assert (out / "federation_model.pt").exists()
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["final_model"]["delivered"] == best.strategy
    # What a user loads from the run folder is the delivered model: its val rsum is the best.
    from mmfl.data.builtin import open_dataset

    model = load(out)
    val = model.evaluate(open_dataset("digits").manifest("val"))
    assert val["retrieval"]["rsum"] == pytest.approx(best.val_rsum, abs=1e-4)
    # Its card says what it is: the control's metrics, and no site's data (so no site's privacy).
    assert model.card.delivered == best.strategy and model.card.privacy == []
    assert model.card.metrics["val"]["rsum"] == pytest.approx(best.val_rsum)
    write_report(summary, out)
    report = (out / "report.md").read_text()
    assert "## Delivered" in report and delivery.line in report


def test_a_control_runs_in_a_child_process(digits, tmp_path: Path) -> None:
    """The deployed coordinator's path: ``python -m mmfl.simulation.controls FOLDER``."""
    from mmfl.server.delivery import control_spec, run_in_child
    from mmfl.strategies.methods import METHODS

    spec = small_spec('strategy="cream+"', "rounds=1")
    control = control_spec(spec, METHODS["cream+"], "server-only", None)
    assert control.strategy == "server-only" and not control.delivery.select
    summary = run_in_child(control, tmp_path / "control")
    assert summary.strategy == "server-only" and (summary.final.val_rsum or 0) > 0
    assert (tmp_path / "control" / "final_model.pt").exists()
