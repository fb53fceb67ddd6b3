"""Deployment with real processes on loopback: the daemon (SuperLink behind nginx, TLS, SuperNode
authentication) and three site agents (image-only, text-only, paired) run CreamFL.

The tests run in order on one federation: connect, probe the public address, refuse an
unregistered key, run 4 rounds, crash the coordinator in round 2 of 4 and resume. Faults at the
proxy are in ``test_deployment_faults.py``.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploy_helpers import SITES, Federation, free_port, mmfl, start_federation, wait_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from mmfl.flower_runtime import flower_bin, flower_env
from mmfl.server.store import RoundRow, Run, SiteRoundRow, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(digits, tmp_path_factory: pytest.TempPathFactory):
    yield from start_federation(tmp_path_factory.mktemp("deploy"), SITES)


def test_registered_sites_connect_through_the_proxy(federation: Federation) -> None:
    wait_for(
        "three sites online",
        lambda: sum(s["status"] == "online" for s in federation.status()["sites"]) == 3,
        120,
    )
    log = (federation.server / "logs" / "nginx-access.log").read_text()
    assert "/v1/fleet/activate-node" in log and "sig=yes" in log


def _request(url: str, method: str, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(
        url,
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_public_address_refuses_the_control_api(federation: Federation) -> None:
    ca = federation.server / "tls" / "ca.crt"
    base = f"https://127.0.0.1:{federation.public_port}"
    assert _request(f"{base}/health", "GET", ca) == 200
    for path in (
        "/v1/control/list-runs",
        "/v1/control/start-run",
        "/v1/runtime/get-nodes",
        "/docs",
        "/openapi.json",
        "/v1/fleet/register-node",
        "/v1/fleet/../control/list-runs",
    ):
        assert _request(f"{base}{path}", "POST", ca) in (403, 404), path
    # The flwr CLI pointed at the public address cannot list or start runs.
    home = federation.root / "outsider"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "public"\n[superlink.public]\naddress = "127.0.0.1:{federation.public_port}"\nroot-certificates = "{ca}"\n'
    )
    env = flower_env(home)
    ls = subprocess.run(
        [flower_bin("flwr"), "ls", "public", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ls.returncode != 0 or "404" in ls.stdout + ls.stderr


def test_an_unregistered_key_is_refused(federation: Federation) -> None:
    mmfl("client", "keygen", "--out", str(federation.root / "keys"), "--name", "intruder")
    log = federation.root / "intruder.log"
    # Output to a file: the SuperNode's helper process inherits it and outlives the SuperNode.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                flower_bin("flower-supernode"),
                "--root-certificates",
                str(federation.server / "tls" / "ca.crt"),
                "--auth-supernode-private-key",
                str(federation.root / "keys" / "intruder"),
                "--superlink",
                f"127.0.0.1:{federation.public_port}",
                "--port",
                str(free_port()),
                "--max-retries",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=flower_env(federation.root / "intruder-home"),
        )
        try:
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code != 0
    assert "Failed to activate SuperNode" in log.read_text()


def test_register_site_reports_the_superlinks_refusal(federation: Federation) -> None:
    """F1: flwr exits 0 with "success": false when the SuperLink refuses a key; mmfl must say
    so, record nothing, and explain that a revoked key cannot come back."""
    keys, server = federation.root / "keys", str(federation.server)
    mmfl("client", "keygen", "--out", str(keys), "--name", "spare")
    mmfl("server", "register-site", "spare", str(keys / "spare.pub"), "--dir", server)
    sites_file = federation.server / "sites.json"
    before = json.loads(sites_file.read_text())
    again = mmfl("server", "register-site", "spare-2", str(keys / "spare.pub"), "--dir", server, check=False)
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith("mmfl: error: the SuperLink refused the key of spare-2:")
    assert json.loads(sites_file.read_text()) == before  # no phantom site recorded
    mmfl("server", "revoke-site", "spare", "--dir", server)
    back = mmfl("server", "register-site", "spare", str(keys / "spare.pub"), "--dir", server, check=False)
    assert back.returncode == 2 and "mmfl client keygen" in back.stderr
    assert json.loads(sites_file.read_text())["spare"]["revoked"] is True


def test_a_deployed_run_completes_and_is_recorded(federation: Federation) -> None:
    run_id = federation.submit(4)
    federation.runs["reference"] = run_id
    wait_for("the 4-round run", lambda: federation.summary(run_id).exists(), 900)
    summary = json.loads(federation.summary(run_id).read_text())
    assert [r["status"] for r in summary["rounds"]] == ["completed"] * 4
    assert all(
        sorted(s["site_id"] for s in r["sites"] if s["accepted"]) == ["img", "pair", "txt"]
        for r in summary["rounds"]
    )
    assert summary["final"]["retrieval"]["rsum"] > 0
    with Session(open_store(federation.server / "runs.sqlite")) as s:
        run = s.get(Run, run_id)
        assert run is not None and run.status == "completed"
        rounds = s.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)).all()
        assert [r.round for r in rounds] == [1, 2, 3, 4]
        ids = [r.id for r in rounds]
        assert len(s.scalars(select(SiteRoundRow).where(SiteRoundRow.round_id.in_(ids))).all()) == 12
    evidence = json.loads((federation.server / "runs" / run_id / "evidence.json").read_text())
    assert {x["id"] for x in evidence["sites"]} == set(SITES) and all(
        len(x["data_fingerprint"]) == 64 for x in evidence["sites"]
    )
    import hashlib

    final_model = federation.server / "runs" / run_id / "final_model.pt"
    assert evidence["final_model"]["sha256"] == hashlib.sha256(final_model.read_bytes()).hexdigest()
    audit = json.loads(
        mmfl("client", "audit", "--state", str(federation.root / "state-pair"), "--json").stdout
    )
    mine = [e for e in audit if e["run_id"] == run_id]
    assert [e["message_type"] for e in mine] == ["query.capabilities"] + ["train.represent"] * 4 + [
        "evaluate.task"
    ]
    assert all(
        e["shapes"] == {"image": [200, 256], "text": [200, 256]}
        for e in mine
        if e["message_type"] == "train.represent"
    )


def test_a_killed_coordinator_resumes_to_the_same_result(federation: Federation) -> None:
    reference = json.loads(federation.summary(federation.runs["reference"]).read_text())
    run_id = federation.submit(4)
    progress = federation.server / "runs" / run_id / "rounds.jsonl"

    def in_round_two() -> bool:
        if not progress.exists():
            return False
        events = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
        return any(e.get("event") == "round-start" and e.get("round") == 2 for e in events)

    wait_for("round 2 to start", in_round_two, 600)
    pid = federation.daemon_pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the whole coordinator: daemon, SuperLink, ServerApp, nginx
    wait_for(
        "the coordinator to be gone",
        lambda: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode != 0,
        30,
    )
    assert not federation.summary(run_id).exists()
    mmfl("server", "start", "--dir", str(federation.server), timeout=120)
    wait_for(
        "sites back online",
        lambda: sum(s["status"] == "online" for s in federation.status()["sites"]) == 3,
        180,
    )
    mmfl("server", "resume", run_id, "--dir", str(federation.server))
    wait_for("the resumed run", lambda: federation.summary(run_id).exists(), 900)
    resumed = json.loads(federation.summary(run_id).read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    for a, b in zip(resumed["rounds"], reference["rounds"], strict=True):
        assert a["status"] == "completed"
        for split in ("val", "test"):
            assert a["server_metrics"][split]["rsum"] == pytest.approx(
                b["server_metrics"][split]["rsum"], abs=1e-6
            )
        assert a["server_metrics"]["train_loss"] == pytest.approx(b["server_metrics"]["train_loss"], rel=1e-6)
    assert resumed["final"]["retrieval"] == pytest.approx(reference["final"]["retrieval"], abs=1e-6)
    with Session(open_store(federation.server / "runs.sqlite")) as s:
        rounds = s.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)).all()
        assert [r.round for r in rounds] == [1, 2, 3, 4]  # none lost, none repeated
        assert s.get(Run, run_id).status == "completed"
