"""The console's faults a newcomer met (issue 36), seen in a real headless Chromium on both of
the console's sources, a run folder (``mmfl simulate --console``) and a run store: the events
table's time column, whether a run shows as live or final, and the ε plot of a run without a DP
site. The run folders are written as a run writes them: each event and round into the run store
and as a line of ``rounds.jsonl``, ``summary.json`` once over."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from console_helpers import (
    FAILED,
    caps,
    chromium,
    console_thread,
    finished_summary,
    metrics,
    rows,
    wait_until,
    write_runs,
)

from mmfl.server.console.folder_source import FolderSource
from mmfl.server.console.store_source import StoreSource
from mmfl.server.daemon import ServerLayout
from mmfl.server.records import RoundRecord, SiteReport
from mmfl.server.store import RunStore, open_store

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
NO_DP = "no DP site"


class SimulatedRun:
    """A simulation's run folder, written as the coordinator's run writes it: ``plan.json``
    (sites simulated from the spec, the store beside it), each event into the run store and
    into ``rounds.jsonl``, each round likewise, and ``summary.json`` at the end."""

    def __init__(self, folder: Path, run_id: str, dp: bool) -> None:
        self.folder, self.run_id, self.dp = folder, run_id, dp
        folder.mkdir(parents=True)
        self.db = folder / "runs.sqlite"
        self.sites = [
            {"id": "img", "modalities": ["image"], "privacy": {"enabled": dp, "target_epsilon": 4.0}},
            # a target without DP, as a spec's defaults have it: no budget, no DP site
            {"id": "txt", "modalities": ["text"], "privacy": {"enabled": False, "target_epsilon": 8.0}},
        ]
        spec = {"name": "sim", "strategy": "cream", "dataset": "digits", "rounds": 2, "sites": self.sites}
        plan = {
            "run_id": run_id,
            "spec": spec,
            "store_url": f"sqlite:///{self.db}",
            "site_configs": str(folder / "site_configs.json"),
            "expected_sites": 2,
        }
        (folder / "plan.json").write_text(json.dumps(plan))
        self.store = RunStore(open_store(f"sqlite:///{self.db}"), run_id)
        self.store.start("sim", "cream", "digits", 0, spec, str(folder))
        for s in self.sites:
            self.store.add_site(s["id"], caps(s["id"], s["modalities"], s["privacy"]["enabled"]))
        self.line({"event": "start", "rounds": 2, "first_round": 1, "sites": ["img", "txt"]})

    def line(self, item: dict[str, Any]) -> None:
        with (self.folder / "rounds.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(item) + "\n")

    def event(self, kind: str, message: str) -> None:
        self.store.event(kind, message)
        self.line({"event": kind, "message": message})

    def round(self, number: int, failed: bool = False) -> None:
        self.line({"event": "round-start", "round": number})
        if failed:
            record = RoundRecord(
                round=number, sites=[SiteReport(site_id="txt", node_id=2, reason="no reply within 15 s")]
            )
            record.fail(FAILED)
        else:
            epsilon = 0.5 * number if self.dp else None
            record = RoundRecord(
                round=number,
                server=metrics(180.0 + number),
                sites=[
                    SiteReport(site_id="img", node_id=1, accepted=True, epsilon=epsilon, bytes_up=10),
                    SiteReport(site_id="txt", node_id=2, accepted=True, bytes_up=10),
                ],
            )
        self.store.add_round(record)
        self.line({"event": "round", **record.model_dump(), "bytes_down": 0, "bytes_up": record.bytes_up})

    def finish(self) -> None:
        self.store.finish("completed", {})
        sites = [
            {**s, "privacy": {**s["privacy"], "epsilon_spent": 1.0 if s["privacy"]["enabled"] else 0.0}}
            for s in self.sites
        ]
        (self.folder / "summary.json").write_text(finished_summary(self.run_id, sites))
        self.line({"event": "finish", "wall_seconds": 1.0, "final": {}})


def restamp(db: Path, table: str, column: str, hour: int) -> list[str]:
    """Give ``table``'s rows known, distinct times (a minute apart, in the order written; naive
    UTC, as the store keeps them); returns them as the console shows them."""
    shown = []
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]
        for i, row_id in enumerate(ids):
            when = datetime(2026, 1, 2, hour, i, 5)
            conn.execute(
                f"UPDATE {table} SET {column} = ? WHERE id = ?", (f"{when:%Y-%m-%d %H:%M:%S}.000000", row_id)
            )
            shown.append(f"{when:%Y-%m-%d %H:%M:%S} UTC")
    return shown


def certificate(path: Path, days: int) -> datetime:
    """A self-signed certificate at ``path`` that expires in ``days``; returns when."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "console-test")])
    now = datetime.now(UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return now + timedelta(days=days)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as driver:
        yield driver


def event_times(driver) -> dict[str, str]:  # noqa: ANN001
    """The events table: kind -> what its time column shows."""
    from selenium.webdriver.common.by import By

    return {
        r.get_attribute("data-kind"): r.find_element(By.CSS_SELECTOR, "td").text
        for r in rows(driver, "events")
        if r.get_attribute("data-kind")
    }


def badge(driver) -> str:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "live").text


def polled(driver) -> bool:  # noqa: ANN001
    """The page has fetched its fragment again since it loaded."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "live").get_attribute("title").startswith("updated")


def epsilon_plot(driver) -> tuple[str, int]:  # noqa: ANN001
    """The ε plot's text and its number of points."""
    from selenium.webdriver.common.by import By

    chart = driver.find_element(By.ID, "chart-epsilon")
    return chart.get_attribute("textContent"), len(chart.find_elements(By.TAG_NAME, "circle"))


def test_the_events_table_shows_when_each_event_happened(browser, tmp_path: Path) -> None:
    # A simulation's run folder: rounds.jsonl's lines carry no time; the run's store has it.
    run = SimulatedRun(tmp_path / "run", "sim-1", dp=True)
    run.event("site-refused", "site far: public-set fingerprint differs; excluded")
    run.round(1)
    run.round(2, failed=True)  # no event line: the console reports the failed round itself
    run.event("privacy-rollback", "site img reports epsilon spent 0.1, less than the 1.25 it reported before")
    run.line({"event": "resume", "message": "resumed after round 2", "at": "2026-01-02T05:06:07Z"})
    run.finish()
    events = restamp(run.db, "events", "at", hour=3)
    rounds = restamp(run.db, "rounds", "finished_at", hour=4)
    with console_thread(FolderSource(run.folder)) as url:
        browser.get(f"{url}/runs/sim-1")
        assert event_times(browser) == {
            "site-refused": events[0],
            "privacy-rollback": events[1],
            "resume": "2026-01-02 05:06:07 UTC",  # a line that carries its own time
            "round-failed": rounds[1],
        }
        browser.get(f"{url}/")
        assert sorted(event_times(browser).values(), reverse=True) == list(event_times(browser).values())
        assert event_times(browser)["round-failed"] == rounds[1]

    # A coordinator's store: its events, and a certificate about to expire, since when it warns.
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    write_runs(url)
    events = restamp(tmp_path / "runs.sqlite", "events", "at", hour=3)
    server = tmp_path / "server"
    (server / "tls").mkdir(parents=True)
    expires = certificate(server / "tls" / "proxy.pem", days=10)
    with console_thread(StoreSource(url, ServerLayout(server), nodes=lambda: None)) as base:
        browser.get(f"{base}/")
        shown = event_times(browser)
        assert shown["certificate-expiring"] == f"{expires - timedelta(days=30):%Y-%m-%d %H:%M:%S} UTC"
        assert all(TIME.match(at) for at in shown.values()), shown
        browser.get(f"{base}/runs/live")
        assert event_times(browser) == dict(
            zip(["round-failed", "resume", "privacy-rollback"], events, strict=True)
        )


def test_a_finished_run_shows_as_final_and_a_running_one_as_live(browser, tmp_path: Path) -> None:
    # A run folder: live while the run runs; final once it is over, without a reload.
    run = SimulatedRun(tmp_path / "run", "sim-1", dp=False)
    run.round(1)
    with console_thread(FolderSource(run.folder)) as url:
        browser.get(f"{url}/runs/sim-1")
        wait_until(browser, "a poll of the run page", polled, 20)
        assert badge(browser) == "live"
        browser.get(f"{url}/")
        wait_until(browser, "a poll of the overview", polled, 20)
        assert badge(browser) == "live"
        run.finish()
        wait_until(
            browser,
            "the overview to show the run over",
            lambda d: badge(d) == "final" and rows(d, "runs")[0].get_attribute("data-status") == "completed",
            20,
        )
        browser.get(f"{url}/")
        assert badge(browser) == "final"
        browser.get(f"{url}/runs/sim-1")
        assert badge(browser) == "final"

    # A run store: a finished run is final, a running one live, and so is the overview while
    # a run runs; once every run is over the overview is idle (a new run may still start).
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    write_runs(url)
    with console_thread(StoreSource(url)) as base:
        browser.get(f"{base}/runs/done")
        assert badge(browser) == "final"
        browser.get(f"{base}/runs/live")
        assert badge(browser) == "live"
        browser.get(f"{base}/")
        wait_until(browser, "a poll of the overview", polled, 20)
        assert badge(browser) == "live"
    over = f"sqlite:///{tmp_path / 'over.sqlite'}"
    done = RunStore(open_store(over), "done")
    done.start("done", "cream", "digits", 0, {"rounds": 1}, "/out/done")
    done.finish("completed", {})
    with console_thread(StoreSource(over)) as base:
        browser.get(f"{base}/")
        wait_until(browser, "a poll of the overview", polled, 20)
        assert badge(browser) == "idle"


def test_the_epsilon_plot_says_when_a_run_has_no_dp_site(browser, tmp_path: Path) -> None:
    plain = SimulatedRun(tmp_path / "plain", "plain-1", dp=False)
    plain.round(1)
    plain.finish()
    with console_thread(FolderSource(plain.folder)) as url:
        browser.get(f"{url}/runs/plain-1")
        text, points = epsilon_plot(browser)
        assert NO_DP in text and "no data yet" not in text and points == 0
    # A DP run before its first round has no data yet, then plots it as it comes.
    private = SimulatedRun(tmp_path / "dp", "dp-1", dp=True)
    with console_thread(FolderSource(private.folder)) as url:
        browser.get(f"{url}/runs/dp-1")
        text, points = epsilon_plot(browser)
        assert "no data yet" in text and NO_DP not in text
        private.round(1)
        private.round(2)
        wait_until(browser, "the DP site's epsilon plotted", lambda d: epsilon_plot(d)[1] == 2, 20)
        assert NO_DP not in epsilon_plot(browser)[0]

    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    write_runs(url)
    with console_thread(StoreSource(url)) as base:
        browser.get(f"{base}/runs/done")  # its one site, txt, has no DP
        text, points = epsilon_plot(browser)
        assert NO_DP in text and points == 0
        browser.get(f"{base}/runs/live")  # img has DP: epsilon 1.25 after round 1
        text, points = epsilon_plot(browser)
        assert NO_DP not in text and points == 1


def test_a_control_that_cannot_finish_any_more_is_not_shown_running(tmp_path: Path) -> None:
    """A run's controls (``controls/NAME``) run inside it: one that failed, or has no summary once
    the run is over, is over too, and the finished simulation's overview is final."""
    run = SimulatedRun(tmp_path / "run", "sim-1", dp=False)
    run.round(1)
    for name in ("server-only", "broken"):
        control = run.folder / "controls" / name
        control.mkdir(parents=True)
        (control / "plan.json").write_text(json.dumps({"run_id": f"{name}-1", "spec": {"rounds": 2}}))
        (control / "rounds.jsonl").write_text(json.dumps({"event": "round-start", "round": 1}) + "\n")
    run.event("control-failed", "broken: the broken control failed: out of memory")
    source = FolderSource(run.folder)
    view = source.overview()
    assert {r.run_id: r.status for r in view.runs} == {
        "sim-1": "running",
        "server-only-1": "running",
        "broken-1": "failed",
    }
    assert view.live == "live"
    run.finish()
    view = source.overview()
    assert {r.run_id: r.status for r in view.runs} == {
        "sim-1": "completed",
        "server-only-1": "failed",
        "broken-1": "failed",
    }
    assert view.live == "final" and all(r.current_round is None for r in view.runs)
