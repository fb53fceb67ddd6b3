"""Whole federations on one machine: records, reproducibility, engines, baselines, failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpers import SMALL, as_json, small_spec
from mmfl.config import FederationSpec, load_config
from mmfl.protocols.summary import RunSummary
from mmfl.server.store import CheckpointRow, EventRow, RoundRow, Run, SiteRoundRow, open_store
from mmfl.simulation.engines import run_flower, run_inprocess
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import write_report


def server_numbers(summary: dict) -> list[float]:
    out = []
    for r in summary["rounds"]:
        sm = r["server_metrics"]
        out += [
            sm.get("train_loss") or 0.0,
            sm.get("distill_loss") or 0.0,
            sm["test"]["rsum"],
            sm["val"]["rsum"],
        ]
        out += [s["metrics"].get("task_loss", 0.0) for s in sorted(r["sites"], key=lambda s: s["site_id"])]
    return out


@pytest.fixture(scope="module")
def cream_run(digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("cream")
    plan = build_plan(small_spec(), out)
    summary = as_json(run_inprocess(plan))
    return summary, out


def test_a_run_records_summary_store_report_checkpoints_and_site_state(cream_run) -> None:
    summary, out = cream_run
    assert as_json(RunSummary.read(out)) == summary  # the file parses as the typed record, unchanged
    assert [r["status"] for r in summary["rounds"]] == ["completed", "completed"]
    assert {s["id"] for s in summary["sites"]} == {"img", "txt", "pair-a", "pair-b"}
    r1 = summary["rounds"][0]
    assert all(s["accepted"] for s in r1["sites"]) and len(r1["sites"]) == 4
    assert r1["bytes_down"] > 0 and r1["bytes_up"] > 0
    # down: every site gets both modalities' global representations of the 300 public rows
    assert r1["bytes_down"] >= 4 * 2 * 300 * 256 * 4
    assert 0 < r1["weight_entropy"]["image"] <= math.log(3) + 1e-6  # image senders: img, pair-a, pair-b
    assert 0 <= summary["final"]["retrieval"]["rsum"] <= 600
    assert set(summary["final"]["site_metrics"]) == {"img", "txt", "pair-a", "pair-b"}
    assert "image_accuracy" in summary["final"]["site_metrics"]["img"]
    assert "retrieval_rsum" in summary["final"]["site_metrics"]["pair-a"]
    engine = open_store(out / "runs.sqlite")
    with Session(engine) as s:
        run = s.scalars(select(Run)).one()
        assert (
            run.status == "completed"
            and run.final_metrics["retrieval"]["rsum"] == summary["final"]["retrieval"]["rsum"]
        )
        rounds = s.scalars(select(RoundRow).order_by(RoundRow.round)).all()
        assert [r.round for r in rounds] == [1, 2]
        assert rounds[0].bytes_up == r1["bytes_up"]
        assert len(s.scalars(select(SiteRoundRow)).all()) == 8
        checkpoints = s.scalars(select(CheckpointRow)).all()
        assert [c.round for c in checkpoints] == [1, 2] and all(len(c.sha256) == 64 for c in checkpoints)
    assert Path(checkpoints[-1].path).exists()
    for site in ("img", "pair-a"):
        state = json.loads((out / "sites" / site / "state" / "model.json").read_text())
        assert state["round"] == 2
    write_report(RunSummary.model_validate(summary), out)
    report = (out / "report.md").read_text()
    assert "| 2 | completed | 4/4 |" in report
    assert (out / "rsum.png").stat().st_size > 1000 and (out / "bytes.png").stat().st_size > 1000


def test_same_seed_same_numbers_other_seed_other_numbers(cream_run, tmp_path: Path) -> None:
    first, _ = cream_run
    again = as_json(run_inprocess(build_plan(small_spec(), tmp_path / "again")))
    assert server_numbers(again) == server_numbers(first)
    other = as_json(run_inprocess(build_plan(small_spec("seed=5"), tmp_path / "other")))
    assert server_numbers(other) != server_numbers(first)


@pytest.mark.slow
def test_flower_engine_runs_two_rounds_and_equals_inprocess(cream_run, tmp_path: Path) -> None:
    first, _ = cream_run
    events: list[dict] = []
    summary = as_json(run_flower(build_plan(small_spec(), tmp_path / "flower"), events.append))
    assert [r["status"] for r in summary["rounds"]] == ["completed", "completed"]
    assert [e["round"] for e in events if e.get("event") == "round"] == [1, 2]
    assert any(e.get("event") == "sites" for e in events)  # progress while sites trained
    for a, b in zip(server_numbers(summary), server_numbers(first), strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    # The private SuperLink is gone.
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "flower" / "flower")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_int8_payloads_quarter_the_representation_bytes(cream_run, tmp_path: Path) -> None:
    """Both directions travel as int8 rows; the server and the sites still learn."""
    first, _ = cream_run
    summary = as_json(run_inprocess(build_plan(small_spec('cream.payload_dtype="int8"'), tmp_path / "int8")))
    for fp32, int8 in zip(first["rounds"], summary["rounds"], strict=True):
        for key in ("bytes_down", "bytes_up"):
            ratio = int8[key] / fp32[key]
            assert 0.25 <= ratio < 0.27, (key, ratio)  # the JSON meta does not shrink
    assert server_numbers(summary) != server_numbers(first)  # quantised targets are other targets ...
    rsum = [r["server_metrics"]["test"]["rsum"] for r in summary["rounds"]]
    base = [r["server_metrics"]["test"]["rsum"] for r in first["rounds"]]
    assert all(abs(a - b) <= 0.1 * b for a, b in zip(rsum, base, strict=True))  # ... of the same quality


def test_baselines_share_the_harness(digits, tmp_path: Path) -> None:
    server_only = as_json(
        run_inprocess(build_plan(small_spec("strategy=server-only", "rounds=1"), tmp_path / "so"))
    )
    assert server_only["sites"] == [] and server_only["rounds"][0]["sites"] == []
    assert server_only["final"]["retrieval"]["rsum"] > 0
    local = as_json(run_inprocess(build_plan(small_spec("strategy=local", "rounds=1"), tmp_path / "local")))
    assert local["final"]["retrieval"] is None and len(local["final"]["site_metrics"]) == 4
    assert "public_loss" not in local["rounds"][0]["sites"][0]["metrics"]
    # Sites train alone: nothing public goes out, no representation comes back, nothing merges.
    round_ = local["rounds"][0]
    assert all(s["accepted"] for s in round_["sites"]) and round_["weight_entropy"] == {}
    assert round_["bytes_down"] < 4 * 2_000 and round_["bytes_up"] < 4 * 2_000  # instructions, replies
    audit = (tmp_path / "local" / "sites" / "pair-a" / "state" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["shapes"] for x in audit if "represent" in x] == [{}]
    assert "distill_loss" not in local["rounds"][0]["server_metrics"]
    mean = as_json(run_inprocess(build_plan(small_spec("strategy=mean", "rounds=1"), tmp_path / "mean")))
    assert abs(mean["rounds"][0]["weight_entropy"]["image"] - math.log(3)) < 1e-6
    central = as_json(
        run_inprocess(build_plan(small_spec("strategy=centralized", "rounds=1"), tmp_path / "central"))
    )
    assert central["sites"] == [] and central["final"]["retrieval"]["rsum"] > 0
    fedavg = as_json(
        run_inprocess(build_plan(small_spec("strategy=fedavg", "rounds=2"), tmp_path / "fedavg"))
    )
    # Only the paired sites take part, all with the first paired site's architectures.
    assert {s["id"] for s in fedavg["sites"]} == {"pair-a", "pair-b"}
    assert all(s["architectures"] == {"image": "cnn-small", "text": "glove-mlp"} for s in fedavg["sites"])
    assert all(x["accepted"] for r in fedavg["rounds"] for x in r["sites"])
    assert fedavg["rounds"][0]["bytes_up"] > 4 * 100_000  # weights travel, not representations
    assert fedavg["final"]["retrieval"]["rsum"] > 0
    for s in (server_only, local, mean, central, fedavg):
        RunSummary.model_validate(s)


def test_centralized_pools_site_rows_as_the_sites_hold_them(digits, tmp_path: Path) -> None:
    from mmfl.client.site import Site
    from mmfl.config import SiteConfig
    from mmfl.data.prepared import PreparedDataset
    from mmfl.models.encoders import featurizers_for
    from mmfl.server.data import pooled_site_rows

    plan = build_plan(small_spec("strategy=centralized"), tmp_path / "c")
    assert plan.site_configs is not None and plan.expected_sites == 0  # no site is contacted
    feats = featurizers_for({"image": "mlp", "text": "bag"}, 28, 1)
    pooled = pooled_site_rows(plan.site_configs, feats, PreparedDataset(plan.dataset_root))
    by_site = dict(zip(["img", "txt", "pair-a", "pair-b"], pooled, strict=True))
    assert not by_site["img"].present["text"].any() and by_site["img"].present["image"].all()
    assert not by_site["txt"].present["image"].any()
    assert by_site["pair-a"].present["image"].all() and by_site["pair-a"].present["text"].all()
    for raw in json.loads(plan.site_configs.read_text()):
        site = Site(SiteConfig.model_validate(raw))  # the rows the site itself trains on
        assert torch.equal(by_site[site.spec.id].labels, site.data.train.labels)


def test_a_round_below_the_minimum_of_sites_is_failed(digits, tmp_path: Path) -> None:
    summary = as_json(
        run_inprocess(build_plan(small_spec("server.min_sites=5", "rounds=1"), tmp_path / "min"))
    )
    r = summary["rounds"][0]
    assert r["status"] == "failed" and "4 sites accepted, fewer than the minimum of 5" in r["reason"]
    assert "distill_loss" not in r["server_metrics"]
    engine = open_store(tmp_path / "min" / "runs.sqlite")
    with Session(engine) as s:
        assert s.scalars(select(RoundRow)).one().status == "failed"
        assert s.scalars(select(Run)).one().status == "completed-with-failed-rounds"


def test_a_site_holding_another_public_set_is_excluded(digits, tmp_path: Path) -> None:
    plan = build_plan(small_spec("rounds=1"), tmp_path / "fp")
    configs = json.loads(Path(plan.site_configs).read_text())
    configs[1]["public_manifest"] = str(Path(configs[1]["public_manifest"]).with_name("val.jsonl"))
    Path(plan.site_configs).write_text(json.dumps(configs))
    summary = as_json(run_inprocess(plan))
    assert {s["id"] for s in summary["sites"]} == {"img", "pair-a", "pair-b"}
    assert summary["rounds"][0]["status"] == "completed"
    with Session(open_store(tmp_path / "fp" / "runs.sqlite")) as s:
        events = [e.message for e in s.scalars(select(EventRow))]
    assert any("txt: public-set fingerprint differs" in e for e in events)


def test_only_image_sites_skip_text_without_crashing(digits, tmp_path: Path) -> None:
    spec = small_spec(
        "rounds=1",
        'sites=[{id = "i1", modalities = ["image"], architectures = {image = "mlp"}},'
        ' {id = "i2", modalities = ["image"], architectures = {image = "cnn-small"}}]',
    )
    summary = as_json(run_inprocess(build_plan(spec, tmp_path / "img")))
    assert summary["rounds"][0]["status"] == "completed"
    assert "text" not in summary["rounds"][0]["weight_entropy"]
    assert summary["rounds"][0]["server_metrics"]["distill_loss"] is not None


def test_cli_simulate_and_init(digits, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.toml"
    init = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "init", *sum((["--set", x] for x in SMALL), [])],
        capture_output=True,
        text=True,
        check=True,
    )
    spec_path.write_text(init.stdout)
    assert load_config(FederationSpec, spec_path) == small_spec()
    assert "# data_dir = ...   unset: prepared data" in init.stdout  # unset keys are listed too
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfl.cli",
            "simulate",
            "--config",
            str(spec_path),
            "--engine",
            "inprocess",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "delivery.select=true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "final test retrieval" in out.stdout and "rsum" in out.stdout
    assert (tmp_path / "run" / "report.md").exists()
    # beside the federation, the servers that use no site, on the same seed; the better on
    # val is delivered, and the run says which
    assert "what the sites added" in out.stdout
    delivery = json.loads((tmp_path / "run" / "summary.json").read_text())["delivery"]
    assert delivery["line"] in out.stdout.replace("\n", " ") or delivery["line"][:60] in out.stdout
    for control in ("server-only", "site-free"):
        done = json.loads((tmp_path / "run" / "controls" / control / "summary.json").read_text())
        assert done["strategy"] == control and done["seed"] == 0 and done["sites"] == []
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfl.cli",
            "simulate",
            "--config",
            str(spec_path),
            "--engine",
            "inprocess",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "--set", "server.lrr=1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "server.lrr: unknown key" in bad.stderr
    assert torch.get_num_threads() >= 1
