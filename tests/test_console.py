"""The operator console: its data layer on a real SQLite run store and on run folders, its
plots, the app's routes and security, the command's refusals, and a real headless Chromium
following a simulation live (``mmfl simulate --console``). The deployed checks (sites online,
a failed round's reason, epsilon against the sites' ledgers) are in ``test_deployment_faults.py``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from console_helpers import (
    FAILED,
    chromium,
    console_process,
    epsilon_cells,
    finished_summary,
    free_port,
    https_status,
    ledger_epsilons,
    metrics,
    port_open,
    rows,
    screenshot,
    wait_until,
    write_runs,
)
from sqlalchemy import text

from helpers import SMALL
from mmfl.config import DaemonConfig
from mmfl.errors import MmflError
from mmfl.server.console.app import create_app
from mmfl.server.console.charts import line_chart
from mmfl.server.console.cli import build
from mmfl.server.console.folder_source import FolderSource
from mmfl.server.console.security import is_loopback, plan_exposure
from mmfl.server.console.store_source import StoreSource
from mmfl.server.daemon import ServerLayout, init_server
from mmfl.server.records import RoundRecord, SiteReport
from mmfl.server.store import open_store


@pytest.fixture()
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    write_runs(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same two runs in a SQLite file and in a real PostgreSQL server."""
    if request.param == "sqlite":
        return request.getfixturevalue("store")
    url = request.getfixturevalue("postgres_url")
    with open_store(url).begin() as conn:  # a clean slate
        for table in ("site_rounds", "rounds", "checkpoints", "events", "sites", "runs"):
            conn.execute(text(f"DELETE FROM {table}"))
    write_runs(url)
    return url


def test_the_data_layer_reads_runs_rounds_privacy_and_events(any_store: str, tmp_path: Path) -> None:
    sqlite_file = tmp_path / "runs.sqlite"
    before = hashlib.sha256(sqlite_file.read_bytes()).hexdigest() if sqlite_file.exists() else None
    source = StoreSource(any_store)
    view = source.overview()
    assert view.kind == "store" and [r.run_id for r in view.runs] == ["live", "done"]
    live = view.runs[0]
    assert (live.status, live.rounds_planned, live.rounds_done, live.rounds_failed) == ("running", 3, 1, 1)
    assert live.current_round == 3 and not live.final and view.runs[1].final
    assert view.runs[1].last_test_rsum == 150.0
    kinds = {e.kind for e in view.events}
    assert {"round-failed", "resume", "privacy-rollback"} <= kinds
    assert any(FAILED in e.message for e in view.events if e.kind == "round-failed")
    img = next(s for s in view.sites if s.name == "img")
    assert (img.dp, img.epsilon_spent, img.epsilon_budget, img.fingerprint_match) == (True, 1.25, 8.0, True)
    assert img.device == "cpu: x86_64, 16 GB" and img.modalities == ["image"] and img.online is None

    detail = source.run("live")
    assert detail is not None and detail.pairs == ["image-text"]
    r1, r2 = detail.rounds
    assert r1.test == {"image-text": 200.0} and r1.val == {"image-text": 200.0} and r1.train_loss == 2.5
    assert (r1.bytes_down, r1.bytes_up) == (2000, 900)
    assert r2.status == "failed" and r2.reason == FAILED
    assert {s.site_id: s.reason for s in r2.dropped}["txt"] == "no reply within 15 s"
    (img_privacy,) = detail.privacy
    assert img_privacy.budget == 8.0 and img_privacy.by_round == {1: 1.25, 2: None}
    assert img_privacy.latest == 1.25
    refusals = [e.kind for e in detail.refusals]
    assert refusals == ["privacy-rollback", "site-dropped"]
    assert [e.kind for e in detail.events if e.kind == "round-failed"] == ["round-failed"]
    assert source.run("nope") is None
    if before is not None:  # read-only: the store file is byte for byte what it was
        assert hashlib.sha256(sqlite_file.read_bytes()).hexdigest() == before


def test_a_server_folder_adds_registrations_nodes_and_certificates(store: str, tmp_path: Path) -> None:
    layout = init_server(tmp_path / "server", DaemonConfig())
    empty = StoreSource(layout.store(), layout, nodes=lambda: {})
    assert empty.overview().runs == []  # no run submitted yet: no store, and no error
    (layout.root / "runs.sqlite").write_bytes((tmp_path / "runs.sqlite").read_bytes())
    (layout.sites_file).write_text(
        json.dumps(
            {
                "img": {"node_id": 11, "registered_at": "2026-01-02T03:04:05+00:00", "revoked": False},
                "old": {"node_id": 12, "registered_at": "2026-01-01T00:00:00+00:00", "revoked": True},
            }
        )
    )
    nodes = {11: {"status": "online", "online-at": "2026-01-02 03:05:00Z"}, 12: {"status": "offline"}}
    view = StoreSource(layout.store(), ServerLayout(layout.root), nodes=lambda: nodes).overview()
    by = {s.name: s for s in view.sites}
    assert view.kind == "coordinator" and set(by) == {"img", "old", "txt"}
    assert (by["img"].online, by["img"].last_seen, by["img"].node_id) == (True, "now", 11)
    assert by["img"].registered_at == "2026-01-02 03:04:05 UTC"
    assert by["old"].revoked and by["old"].online is False
    assert by["txt"].registered is False and by["txt"].online is False
    files = {c.file: c for c in view.certificates}
    assert {"ca.crt", "proxy.pem", "superlink.pem"} <= set(files)
    assert files["ca.crt"].days_left > 3000 and 700 < files["proxy.pem"].days_left < 830


def _folder(tmp_path: Path, finished: bool) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    spec = {
        "name": "sim",
        "strategy": "cream",
        "dataset": "digits",
        "rounds": 2,
        "sites": [
            {"id": "img", "modalities": ["image"], "privacy": {"enabled": True, "target_epsilon": 4.0}},
            {"id": "far", "modalities": ["text"], "privacy": {"enabled": False}},
        ],
    }
    (folder / "plan.json").write_text(json.dumps({"run_id": "sim-1", "spec": spec}))
    record = RoundRecord(
        round=1,
        server=metrics(180.0),
        sites=[SiteReport(site_id="img", node_id=1, accepted=True, epsilon=0.75, bytes_up=10)],
    )
    lines = [
        {"event": "site-refused", "message": "site far: public-set fingerprint differs; excluded"},
        {"event": "start", "rounds": 2, "first_round": 1, "sites": ["img"]},
        {"event": "round-start", "round": 1},
        {"event": "round", **record.model_dump(), "bytes_down": 0, "bytes_up": 10},
        {"event": "round-start", "round": 2},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n" + '{"event": "sites", "rou'  # a line being written
    (folder / "rounds.jsonl").write_text(text)
    if finished:
        privacy = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-5, "epsilon_spent": 0.8}
        summary = finished_summary("sim-1", [{"id": "img", "modalities": ["image"], "privacy": privacy}])
        (folder / "summary.json").write_text(summary)
    return folder


def test_a_run_folder_is_read_while_running_and_when_finished(tmp_path: Path) -> None:
    source = FolderSource(_folder(tmp_path, finished=False))
    view = source.overview()
    (run,) = view.runs
    assert (run.run_id, run.status, run.current_round, run.rounds_done, run.final) == (
        "sim-1",
        "running",
        2,
        1,
        False,
    )
    sites = {s.name: s for s in view.sites}
    assert sites["img"].epsilon_spent == 0.75 and sites["img"].epsilon_budget == 4.0
    assert sites["far"].fingerprint_match is False
    detail = source.run("sim-1")
    assert detail is not None and detail.privacy[0].by_round == {1: 0.75}
    assert [e.kind for e in detail.events] == ["site-refused"]

    # A run that stopped on an error says so (not "running" for ever); resumed, it runs again.
    folder = _folder(tmp_path, finished=False)
    with (folder / "rounds.jsonl").open("a") as fh:
        fh.write("\n" + json.dumps({"event": "failed", "message": "OSError: disk full"}) + "\n")
    (run,) = FolderSource(folder).overview().runs
    assert (run.status, run.current_round) == ("failed", None)
    assert [e.kind for e in FolderSource(folder).run("sim-1").events] == ["site-refused", "failed"]
    with (folder / "rounds.jsonl").open("a") as fh:
        fh.write(json.dumps({"event": "start", "rounds": 3, "first_round": 2}) + "\n")
    assert FolderSource(folder).overview().runs[0].status == "running"

    source = FolderSource(_folder(tmp_path, finished=True))
    (run,) = source.overview().runs
    assert run.status == "completed" and run.current_round is None and run.final
    img = next(s for s in source.overview().sites if s.name == "img")
    assert (img.epsilon_spent, img.fingerprint_match, img.device) == (0.8, True, "cpu: cpu")


def test_bad_sources_are_one_line(tmp_path: Path) -> None:
    for make, words in (
        (lambda: StoreSource(f"sqlite:///{tmp_path / 'missing.sqlite'}"), "no run store at"),
        (lambda: FolderSource(tmp_path / "nope"), "does not exist"),
        (lambda: FolderSource(tmp_path), "is not a run folder"),
    ):
        with pytest.raises(MmflError, match=words) as err:
            make()
        assert "\n" not in str(err.value)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(MmflError, match="is not an mmfl run store"):
        StoreSource(str(other))


def test_charts_are_inline_svg() -> None:
    empty = line_chart({}, "nothing")
    assert empty.startswith("<svg") and "no data yet" in empty
    chart = line_chart(
        {"<b>site</b>": [(1, 0.5), (2, None), (3, 1.5), (4, 2.0)]},
        "ε",
        limits={"<b>site</b>": 8.0},
        chart_id="c",
    )
    assert chart.count("<polyline") == 1  # the gap at round 2 splits the line; a lone point is a dot
    assert chart.count("<circle") == 3 and 'stroke-dasharray="5 4"' in chart
    assert "<b>" not in chart and "&lt;b&gt;site" in chart and "style=" not in chart


def test_the_app_serves_pages_only_by_get_with_strict_headers(store: str) -> None:
    from fastapi.testclient import TestClient

    app = create_app(StoreSource(store))
    for route in app.routes:
        assert set(getattr(route, "methods", None) or {"GET"}) <= {"GET", "HEAD"}, route
    client = TestClient(app, base_url="http://127.0.0.1")
    page = client.get("/")
    assert page.status_code == 200 and 'data-run="live"' in page.text and "mmfl console" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    run = client.get("/runs/live")
    assert (
        run.status_code == 200 and FAILED in run.text and "<svg" in run.text and 'data-final="0"' in run.text
    )
    assert client.get("/partials/runs/live").text.lstrip().startswith("<div")
    assert client.get("/api/runs/live").json()["rounds"][1]["reason"] == FAILED
    assert client.get("/runs/nope").status_code == 404
    assert client.post("/").status_code == 405
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_a_token_guards_every_path(store: str) -> None:
    from fastapi.testclient import TestClient

    token = "s3cret-token-0123456789"
    client = TestClient(create_app(StoreSource(store), token=token.encode(), allowed_hosts=["*"]))
    for path in ("/", "/runs/live", "/api/overview", "/static/console.js", "/nope"):
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/", headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get("/", headers={"authorization": "Basic !!"}).status_code == 401
    assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
    basic = base64.b64encode(f"operator:{token}".encode()).decode()
    assert client.get("/static/console.js", headers={"authorization": f"Basic {basic}"}).status_code == 200


def test_exposure_rules(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("console.example")
    assert plan_exposure("127.0.0.1", 1, None, None, None).url == "http://127.0.0.1:1/"
    token = tmp_path / "token"
    token.write_text("short\n")
    token.chmod(0o600)
    with pytest.raises(MmflError, match="fewer than 16"):
        plan_exposure("0.0.0.0", 1, token, None, None)
    token.write_text("a-long-enough-secret\n")
    with pytest.raises(MmflError, match="needs TLS"):
        plan_exposure("0.0.0.0", 1, token, None, None)
    token.chmod(0o644)
    with pytest.raises(MmflError, match="readable by others"):
        plan_exposure("0.0.0.0", 1, token, None, None)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mmfl.cli", "server", "console", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_non_loopback_console_needs_a_token_and_tls(store: str, tmp_path: Path) -> None:
    layout = init_server(
        tmp_path / "server", DaemonConfig(public_port=free_port(), superlink_port=free_port())
    )
    (layout.root / "runs.sqlite").write_bytes(Path(store.removeprefix("sqlite:///")).read_bytes())
    token = tmp_path / "console.token"
    token.write_text("console-token-0123456789abcdef\n")
    token.chmod(0o600)
    loose = tmp_path / "loose.token"
    loose.write_text("console-token-0123456789abcdef\n")
    loose.chmod(0o644)
    server = str(layout.root)
    # Through the command: one line on stderr, exit status 2.
    refusals = {
        "needs --token-file": _cli("--dir", server, "--host", "0.0.0.0"),
        "public Fleet port": _cli("--dir", server, "--port", str(layout.config().public_port)),
        "is not a run folder": _cli("--run-folder", str(tmp_path)),
    }
    for words, proc in refusals.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (words, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("mmfl: error: ") and words in line, line
    # The same checks in-process (what the command runs before it listens).
    for words, args in {
        "readable by others": (layout.root, None, None, "0.0.0.0", loose),
        "needs TLS": (None, store, None, "0.0.0.0", token),
        "SuperLink port": (layout.root, None, None, "127.0.0.1", None, layout.config().superlink_port),
        "no run store at": (None, str(tmp_path / "missing.sqlite"), None, "127.0.0.1", None),
        "give one of": (layout.root, None, tmp_path, "127.0.0.1", None),
    }.items():
        dir_, store_, folder, host, token_file, *port = args
        with pytest.raises(MmflError, match=words):
            build(dir_, store_, folder, host, port[0] if port else 8787, token_file, None, None, 2.0)
    ca = layout.tls / "ca.crt"
    with console_process("--dir", server, "--host", "0.0.0.0", "--token-file", str(token)) as url:
        secret = token.read_text().strip()
        assert https_status(f"{url}/", ca) == 401
        assert (
            https_status(f"{url}/api/overview", ca, {"Authorization": "Bearer not-the-token-0123456789"})
            == 401
        )
        assert https_status(f"{url}/", ca, {"Authorization": f"Bearer {secret}"}) == 200
        basic = base64.b64encode(f"operator:{secret}".encode()).decode()
        assert https_status(f"{url}/runs/live", ca, {"Authorization": f"Basic {basic}"}) == 200
        with pytest.raises(OSError):  # TLS only
            urllib.request.urlopen(url.replace("https", "http") + "/", timeout=10)


@pytest.mark.slow
def test_the_browser_follows_a_simulation_live(digits, tmp_path: Path) -> None:
    """``mmfl simulate --console``: Chromium sees the run's rounds appear while it runs, then the
    final page, whose epsilon per round is the simulated site's own ledger."""
    from selenium.webdriver.common.by import By

    out, port = tmp_path / "sim", free_port()
    sets = [*SMALL, "rounds=3", "sites.0.privacy.enabled=true", "sites.0.privacy.target_epsilon=6"]
    args = ["simulate", "--engine", "inprocess", "--no-controls", "--out", str(out), "--console"]
    log = tmp_path / "simulate.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfl.cli", *args, "--console-port", str(port), *[f"--set={s}" for s in sets]],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env={**os.environ, "COLUMNS": "200"},
    )
    shots = tmp_path / "shots"
    try:
        deadline = time.monotonic() + 180
        while not port_open(port):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the console did not come up"
            time.sleep(0.5)
        with chromium() as driver:
            driver.get(f"http://127.0.0.1:{port}/")
            wait_until(driver, "the run in the list", lambda d: rows(d, "runs")[0].get_attribute("data-run"))
            assert "4 simulated" in driver.find_element(By.ID, "sites-online").text
            driver.find_element(By.CSS_SELECTOR, "table#runs a").click()
            # live: a finished round shows while the run still runs (the page polls its fragment)
            wait_until(
                driver,
                "round 1 while the run runs",
                lambda d: (
                    d.find_elements(By.CSS_SELECTOR, 'tr.round[data-round="1"]')
                    and d.find_element(By.CSS_SELECTOR, "[data-final]").get_attribute("data-final") == "0"
                ),
                240,
            )
            assert "running" in driver.find_element(By.ID, "progress").text
            screenshot(driver, "simulation-run-live", shots)
            wait_until(
                driver,
                "the run to finish",
                lambda d: d.find_element(By.CSS_SELECTOR, "[data-final]").get_attribute("data-final") == "1",
                300,
            )
            assert [r.get_attribute("data-status") for r in rows(driver, "rounds")] == ["completed"] * 3
            summary = json.loads((out / "summary.json").read_text())
            run_id = summary["run_id"]
            ledger = ledger_epsilons(out / "sites" / "img" / "state", run_id)
            shown = epsilon_cells(driver, "img")
            assert set(shown) == {1, 2, 3} and shown == pytest.approx(ledger, rel=1e-9)
            assert "final" in driver.find_element(By.ID, "live").text
            assert driver.find_element(By.ID, "chart-rsum").find_elements(By.TAG_NAME, "polyline")
            screenshot(driver, "simulation-run", shots)
            driver.get(f"http://127.0.0.1:{port}/")
            screenshot(driver, "simulation-overview", shots)
        # after the run the console stays up until Ctrl-C, then the command exits cleanly
        deadline = time.monotonic() + 60
        while "stays up until Ctrl-C" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert port_open(port)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()[-2000:]
