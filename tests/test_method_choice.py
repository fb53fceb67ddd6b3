"""``strategy = "auto"``: the method follows the federation's shape, and the run says which and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import as_json, small_spec
from mmfl.strategies.choice import SiteShape, choose_method

MODALITIES = ["image", "text"]
PAIRED_A = SiteShape(modalities=MODALITIES, architectures={"image": "cnn-small", "text": "bag"})
PAIRED_B = SiteShape(modalities=MODALITIES, architectures={"image": "mlp", "text": "glove-mlp"})
IMAGE = SiteShape(modalities=["image"], architectures={"image": "mlp"})
TEXT = SiteShape(modalities=["text"], architectures={"text": "bag"})


@pytest.mark.parametrize(
    ("shapes", "chosen", "says"),
    [
        ([PAIRED_A, PAIRED_A, PAIRED_A], "fedavgm", "one architecture"),
        ([PAIRED_A, PAIRED_B], "regress", "2 sites hold every modality"),
        ([PAIRED_A, PAIRED_B, IMAGE, TEXT], "regress", "2 uni-modal sites cannot take part"),
        ([PAIRED_A, PAIRED_A, IMAGE], "regress", "1 uni-modal site cannot"),  # not all paired
        (
            [PAIRED_A, PAIRED_A, PAIRED_B, PAIRED_B, PAIRED_B],
            "regress",
            "2 groups of sites with one architecture",
        ),
        ([PAIRED_A, PAIRED_A, PAIRED_B], "regress", "1 group of sites with one architecture average"),
        ([PAIRED_A, IMAGE, TEXT], "cream+", "uni-modal sites take part"),  # docs/own-data.md
        ([IMAGE, TEXT], "cream+", "0 of 2 sites"),
    ],
)
def test_the_method_follows_the_shape(shapes: list[SiteShape], chosen: str, says: str) -> None:
    choice = choose_method(MODALITIES, shapes)
    assert (choice.asked, choice.chosen) == ("auto", chosen)
    assert says in choice.why and choice.line.startswith(f"method: {chosen} (")


def test_regress_needs_a_public_set_large_enough_to_learn_by_regression() -> None:
    """Two paired sites and one image-only on 419 OpenClipart items (126 public pairs): regress
    48.8 test rsum against cream+ 132.1 and server-only 139.3; it paid with 1,000 and 1,500."""
    small = choose_method(MODALITIES, [PAIRED_A, PAIRED_B, IMAGE], public_pairs=126)
    assert small.chosen == "cream+" and "public set holds 126 pairs, fewer than the 1000" in small.why
    assert choose_method(MODALITIES, [PAIRED_A, PAIRED_B, IMAGE], public_pairs=1000).chosen == "regress"
    assert choose_method(MODALITIES, [PAIRED_A, PAIRED_A], public_pairs=10).chosen == "fedavgm"


def test_the_default_digits_federation_keeps_regress(digits) -> None:
    """The default spec's six sites (two paired of different architectures) resolve to the
    method measured best there, so the demo's numbers do not move."""
    from mmfl.config import FederationSpec

    spec = FederationSpec()
    assert spec.strategy == "auto"
    shapes = [SiteShape(modalities=s.modalities, architectures=s.architectures) for s in spec.sites]
    from mmfl.data.builtin import open_dataset
    from mmfl.strategies.choice import public_pairs

    pairs = public_pairs(open_dataset("digits").manifest("public").samples, spec.modalities)
    assert pairs == 1000 and choose_method(spec.modalities, shapes, pairs).chosen == "regress"


def test_an_auto_run_resolves_its_method_and_says_why(digits, tmp_path: Path) -> None:
    """The plan, the run id, the summary, the report and the progress log carry the chosen
    method; the run is the same as one that named it."""
    from mmfl.protocols.summary import RunSummary
    from mmfl.simulation.engines import run_inprocess
    from mmfl.simulation.plan import build_plan
    from mmfl.simulation.report import write_report

    one_architecture = (
        'sites=[{id = "a", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}},'
        ' {id = "b", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}}]'
    )
    plan = build_plan(small_spec("strategy=auto", one_architecture, "rounds=1"), tmp_path / "auto")
    assert plan.spec.strategy == "fedavgm" and plan.run_id.startswith("digits-default-fedavgm-s0-")
    assert plan.method_choice is not None and plan.method_choice.chosen == "fedavgm"
    summary = as_json(run_inprocess(plan))
    assert summary["strategy"] == "fedavgm"
    assert summary["method_choice"] == {
        "asked": "auto",
        "chosen": "fedavgm",
        "why": "all 2 sites hold every modality with one architecture: their weights average",
    }
    write_report(RunSummary.model_validate(summary), tmp_path / "auto")
    assert "Method chosen by its shape: **fedavgm**" in (tmp_path / "auto" / "report.md").read_text()
    events = [json.loads(line) for line in (tmp_path / "auto" / "rounds.jsonl").read_text().splitlines()]
    assert [e["message"] for e in events if e.get("event") == "method"] == [plan.method_choice.line]
    named = as_json(
        run_inprocess(
            build_plan(small_spec("strategy=fedavgm", one_architecture, "rounds=1"), tmp_path / "named")
        )
    )
    assert named["method_choice"] is None
    assert named["final"]["retrieval"] == summary["final"]["retrieval"]


def test_an_unnamed_run_is_named_after_the_data_it_used(digits, tmp_path: Path) -> None:
    """Issue 36: `--set dataset=...` on the default spec made a run named `digits-default-...`."""
    from mmfl.data.prepared import PreparedDataset
    from mmfl.paths import mmfl_home
    from mmfl.simulation.plan import build_plan

    prepared = PreparedDataset(mmfl_home() / "data" / "digits")
    copy = tmp_path / "scans"
    copy.mkdir()
    for f in prepared.root.iterdir():
        if f.name != "dataset.json":
            (copy / f.name).symlink_to(f)
    info = json.loads((prepared.root / "dataset.json").read_text())
    (copy / "dataset.json").write_text(json.dumps({**info, "name": "my scans (v2)"}))
    plan = build_plan(small_spec(f'data_dir="{copy}"', "rounds=1"), tmp_path / "run")
    assert plan.spec.name == "my-scans-v2-default" and plan.run_id.startswith("my-scans-v2-default-cream-s0-")
    named = build_plan(small_spec(f'data_dir="{copy}"', 'name="mine"'), tmp_path / "named")
    assert named.spec.name == "mine" and named.run_id.startswith("mine-cream-s0-")
