"""DP inside whole federations: epsilon reported per site per round, budgets enforced by the
site, and a ledger that survives a killed site process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpers import small_spec
from mmfl.client.ledger import PrivacyLedger, epsilon_of
from mmfl.server.store import SiteRoundRow, open_store
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan
from mmfl.simulation.report import validate_summary, write_report

DP_ALL = [f"sites.{i}.privacy.enabled=true" for i in range(4)]


def test_dp_federation_reports_epsilon_per_site_per_round(digits, tmp_path: Path) -> None:
    summary = run_inprocess(build_plan(small_spec(*DP_ALL), tmp_path / "dp"))
    validate_summary(summary)
    eps = [r["privacy"] for r in summary["rounds"]]
    assert set(eps[0]) == set(eps[1]) == {"img", "txt", "pair-a", "pair-b"}
    for site in eps[0]:
        assert 0 < eps[0][site] < eps[1][site] <= 8.0
    assert all(s["privacy"]["enabled"] and s["privacy"]["target_epsilon"] == 8.0 for s in summary["sites"])
    # Nothing computed on private data leaves a DP site.
    for r in summary["rounds"]:
        for s in r["sites"]:
            assert "task_loss" not in s["metrics"] and s["metrics"]["dp_steps"] >= 1
    assert all(m == {} for m in summary["final"]["site_metrics"].values())
    with Session(open_store(tmp_path / "dp" / "runs.sqlite")) as s:
        stored = s.scalars(select(SiteRoundRow)).all()
    assert len(stored) == 8 and all(row.epsilon is not None and row.epsilon > 0 for row in stored)
    write_report(summary, tmp_path / "dp")
    assert "Privacy spent" in (tmp_path / "dp" / "report.md").read_text()


def test_a_site_refuses_the_round_that_would_exceed_its_budget(digits, tmp_path: Path) -> None:
    spec = small_spec(
        "rounds=3",
        "sites.0.privacy.enabled=true",
        "sites.0.privacy.planned_rounds=1",
        "sites.0.privacy.target_epsilon=2.0",
    )
    summary = run_inprocess(build_plan(spec, tmp_path / "budget"))
    by_round = [{s["site_id"]: s for s in r["sites"]} for r in summary["rounds"]]
    assert by_round[0]["img"]["accepted"] and 0 < by_round[0]["img"]["epsilon"] <= 2.0
    for later in by_round[1:]:
        img = later["img"]
        assert not img["accepted"]
        assert (
            "privacy budget: target epsilon 2.000, spent" in img["reason"] and "would reach" in img["reason"]
        )
        assert all(s["accepted"] for sid, s in later.items() if sid != "img")
    assert [r["status"] for r in summary["rounds"]] == ["completed"] * 3
    ledger = PrivacyLedger(tmp_path / "budget" / "sites" / "img" / "state", "img", "x" * 64)
    files = list((tmp_path / "budget" / "sites" / "img" / "state" / "privacy").glob("ledger-*.json"))
    assert len(files) == 1 and [e["round"] for e in json.loads(files[0].read_text())["entries"]] == [1]
    assert ledger is not None


ONE_ROUND = """
import json, sys, time
import numpy as np
from mmfl.client.site import Site
from mmfl.config import SiteConfig
from mmfl.protocols.messages import RepresentInstruction, TrainSettings

configs, round_, linger = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "linger"
site = Site(SiteConfig.model_validate(json.load(open(configs))[0]))
pub = site.public
samples = site.public_manifest.samples
rows = {m: [i for i, x in enumerate(samples) if x.has(m)] for m in ("image", "text")}
rng = np.random.default_rng(round_)
arrays = {}
for m, r in rows.items():
    g = rng.normal(size=(len(r), 256)).astype(np.float32)
    arrays[m] = g / np.linalg.norm(g, axis=1, keepdims=True)
settings = TrainSettings(local_epochs=1, batch_size=32, lr=1e-3, weight_decay=0, public_batch_size=128,
                         contrast_temperature=0.5, interintra_weight=0.5)
instruction = RepresentInstruction(run_id="kill-test", round=round_, public_fingerprint=site.public_manifest.fingerprint(),
                                   public_indices=list(range(len(samples))), rows=rows, embed_dim=256, settings=settings)
reply, _ = site.represent(instruction, arrays)
print(json.dumps({"status": reply.status, "epsilon": reply.privacy.epsilon_spent, "metrics": reply.metrics}), flush=True)
if linger:
    time.sleep(600)
"""


def test_a_killed_site_process_restarts_with_its_ledger(digits, tmp_path: Path) -> None:
    plan = build_plan(small_spec("sites.0.privacy.enabled=true"), tmp_path / "kill")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", ONE_ROUND, str(plan.site_configs), "1", "linger"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out1 = json.loads(first.stdout.readline())
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the site dies between rounds
        first.wait(timeout=30)
    assert out1["status"] == "ok" and out1["epsilon"] > 0
    second = subprocess.run(
        [sys.executable, "-c", ONE_ROUND, str(plan.site_configs), "2", "once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert out2["status"] == "ok" and out2["epsilon"] > out1["epsilon"]
    ledger_file = next((tmp_path / "kill" / "sites" / "img" / "state" / "privacy").glob("ledger-*.json"))
    ledger = json.loads(ledger_file.read_text())
    assert [e["round"] for e in ledger["entries"]] == [1, 2]
    sigma, q = ledger["noise_multiplier"], ledger["entries"][0]["sample_rate"]
    total = sum(e["steps"] for e in ledger["entries"])
    one_run = epsilon_of([[sigma, q, total]], 1e-5, "rdp")
    assert abs(out2["epsilon"] - one_run) < 1e-9
