"""Nothing lost on crash: a writer doing a site's and a coordinator's durable writes (privacy
ledger, audit log, model snapshot, run store) is SIGKILLed at random points; after every kill
the state is readable as the last good state, and no spend is ever forgotten."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmfl.client.privacy import audit
from mmfl.client.privacy.budget import PrivacyBudget
from mmfl.client.privacy.ledger import LedgerError
from mmfl.client.state import SiteState
from mmfl.config import PrivacyConfig
from mmfl.server.store import RoundRow, RunStore, open_store

WRITER = r"""
import json, sys, torch
from pathlib import Path
from flwr.app import RecordDict
from mmfl.client.privacy import audit
from mmfl.client.privacy.budget import PrivacyBudget
from mmfl.client.state import SiteState
from mmfl.config import PrivacyConfig
from mmfl.server.records import RoundRecord
from mmfl.server.store import RunStore, open_store

root = Path(sys.argv[1]); first = int(sys.argv[2])
budget = PrivacyBudget(root / "site", "s", PrivacyConfig(enabled=True, target_epsilon=50.0, planned_rounds=200))
state = SiteState(root / "site")
store = RunStore(open_store(root / "runs.sqlite"), "run")
model = torch.nn.Linear(64, 64)
data = "d" * 64
ledger = budget.load() or budget.open(data, 5000)
budget.plan(ledger, data, 32, 1)  # the noise search (seconds) happens once, before the kills
print("ready", flush=True)
for r in range(first, first + 10_000):
    ledger = budget.commit(ledger, budget.plan(ledger, data, 32, 1), "run", r)
    audit.append(root / "site", "train.represent", "run", r, "ok", RecordDict(), ledger.spent())
    state.save_model(model, r, {"x": "linear"}, "run", {"dp": True})
    store.add_round(RoundRecord(round=r))
    print(json.dumps({"round": r, "spent": ledger.spent()}), flush=True)
"""


def test_killed_writers_leave_the_last_good_state(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    store = open_store(tmp_path / "runs.sqlite")
    RunStore(store, "run").start("crash", "cream", "digits", 0, {}, str(tmp_path))
    rng = random.Random(0)
    done_spent, done_round, outcomes = 0.0, 0, {"clean": 0, "fail-closed, reset": 0}
    budget = PrivacyBudget(
        tmp_path / "site", "s", PrivacyConfig(enabled=True, target_epsilon=50.0, planned_rounds=200)
    )
    for _kill in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(done_round + 1)],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "writer.err", "a"), text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # Wait for the first completed round (its noise search takes seconds, longer on a busy
        # machine), then kill at a random point of the following ~4 rounds a second.
        first = proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        for line in [first, *proc.stdout.read().splitlines()]:  # rounds that completed before the kill
            record = json.loads(line)
            done_round, done_spent = record["round"], record["spent"]
        proc.wait()
        # The ledger: the last committed state, or fail-closed and recovered, never forgiving.
        try:
            ledger = budget.load()
            outcomes["clean"] += 1
        except LedgerError:
            ledger = budget.reset("crash test: writer killed")
            outcomes["fail-closed, reset"] += 1
        assert ledger is not None and ledger.spent() >= done_spent - 1e-9
        # The audit log holds every completed round (a torn last line is skipped).
        rounds = {e.round for e in audit.read(tmp_path / "site")}
        assert set(range(1, done_round + 1)) <= rounds
        # The newest snapshot loads whole.
        meta = SiteState(tmp_path / "site").load_model(torch.nn.Linear(64, 64), {"x": "linear"}, "run")
        assert done_round == 0 or (meta is not None and meta["round"] >= done_round)
        # The run store holds every completed round, each once.
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        with Session(open_store(tmp_path / "runs.sqlite")) as s:
            stored = [r.round for r in s.scalars(select(RoundRow).where(RoundRow.run_id == "run"))]
        assert set(range(1, done_round + 1)) <= set(stored) and len(stored) == len(set(stored))
        done_round = max([done_round, *stored])
    assert done_round >= 4  # the writer made progress between kills
    print(outcomes)
