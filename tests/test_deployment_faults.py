"""A fault at the proxy, on its own federation (one image-only site with DP) so that it runs
beside the main deployment tests: uploads blocked by nginx must fail the round, never complete
it. Then the operator console, on the same federation, in a real headless Chromium: the site
online, the failed round and its reason, a run's rounds appearing while it runs, and epsilon per
round equal to the site's own ledger; the public Fleet address serves none of the console."""

from __future__ import annotations

import json
import re

import pytest
from console_helpers import (
    chromium,
    console_process,
    epsilon_cells,
    https_status,
    ledger_epsilons,
    rows,
    screenshot,
    wait_until,
)
from deploy_helpers import Federation, mmfl, start_federation, wait_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from mmfl.server.store import RoundRow, Run, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(digits, tmp_path_factory: pytest.TempPathFactory):
    yield from start_federation(
        tmp_path_factory.mktemp("deploy-faults"), {"img": ["image"]}, extra=("--epsilon", "8")
    )


FAILED = "0 sites accepted, fewer than the minimum of 1"


@pytest.fixture(scope="module")
def blocked_run(federation: Federation) -> str:
    """A one-round run whose representation uploads nginx refuses (its body limit lowered to
    16 KiB with a reload; uploads of 200 x 256 floats exceed it, capability replies do not).
    The SuperLink and the sites stay up; the limit is restored afterwards."""
    config = federation.server / "server.toml"
    original = config.read_text()
    config.write_text(original.replace('max_body_size = "64m"', 'max_body_size = "16k"'))
    try:
        mmfl("server", "reload", "--dir", str(federation.server))
        assert "client_max_body_size 16k" in (federation.server / "nginx" / "nginx.conf").read_text()
        run_id = federation.submit(1, round_timeout=15)
        wait_for("the blocked run", lambda: federation.summary(run_id).exists(), 600)
    finally:  # restored before anything is asserted: the module's other tests need 64m
        config.write_text(original)
        mmfl("server", "reload", "--dir", str(federation.server))
        assert "client_max_body_size 64m" in (federation.server / "nginx" / "nginx.conf").read_text()
    return run_id


def test_a_round_with_uploads_blocked_at_the_proxy_is_failed(
    federation: Federation, blocked_run: str
) -> None:
    summary = json.loads(federation.summary(blocked_run).read_text())
    r1 = summary["rounds"][0]
    assert r1["status"] == "failed" and FAILED in r1["reason"]
    # The cut upload holds the round no longer than its deadline (Flower alone waits 180 s).
    assert [s["reason"] for s in r1["sites"]] == ["no reply within 15 s"]
    with Session(open_store(federation.server / "runs.sqlite")) as s:
        assert s.scalars(select(RoundRow).where(RoundRow.run_id == blocked_run)).one().status == "failed"
        assert s.get(Run, blocked_run).status == "completed-with-failed-rounds"
    assert " 413 " in (federation.server / "logs" / "nginx-access.log").read_text()


def test_a_config_that_cannot_be_applied_in_place_is_refused(federation: Federation) -> None:
    config = federation.server / "server.toml"
    original = config.read_text()
    port = int(re.search(r"superlink_port = (\d+)", original).group(1))
    config.write_text(original.replace(f"superlink_port = {port}", f"superlink_port = {port + 1}"))
    try:
        bad = mmfl("server", "reload", "--dir", str(federation.server), check=False)
        assert bad.returncode != 0 and "superlink_port" in bad.stderr
    finally:
        config.write_text(original)
    mmfl("server", "reload", "--dir", str(federation.server))
    assert "client_max_body_size 64m" in (federation.server / "nginx" / "nginx.conf").read_text()


def test_the_console_follows_the_federation(federation: Federation, blocked_run: str, tmp_path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    blocked = blocked_run
    ca = federation.server / "tls" / "ca.crt"
    fleet = f"https://127.0.0.1:{federation.public_port}"
    for path in ("/", f"/runs/{blocked}", "/partials/overview", "/api/overview", "/static/console.js"):
        assert https_status(fleet + path, ca) == 404, path  # nginx: Fleet API and /health only
    shots = tmp_path / "shots"

    def final(d) -> str:  # noqa: ANN001
        return d.find_element(By.CSS_SELECTOR, "[data-final]").get_attribute("data-final")

    with console_process("--dir", str(federation.server), "--refresh", "1") as url, chromium() as driver:
        driver.get(f"{url}/")
        site = 'tr.site[data-site="img"]'
        wait_until(
            driver,
            "img online",
            lambda d: d.find_element(By.CSS_SELECTOR, site).get_attribute("data-online") == "yes",
        )
        assert "matches" in driver.find_element(By.CSS_SELECTOR, f"{site} td.fingerprint").text
        # the blocked run: its round failed, with the reason and the dropped site's own reason
        driver.get(f"{url}/runs/{blocked}")
        (row,) = rows(driver, "rounds")
        assert row.get_attribute("data-status") == "failed" and FAILED in row.text
        assert "img: no reply within 15 s" in row.text
        assert any(
            FAILED in e.text for e in driver.find_elements(By.CSS_SELECTOR, 'tr[data-kind="round-failed"]')
        )
        screenshot(driver, "deployed-failed-round", shots)
        # a new run: its rounds appear while it runs
        run_id = federation.submit(2)
        driver.get(f"{url}/")
        wait_until(
            driver,
            "the run listed",
            lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.run[data-run="{run_id}"]'),
            300,
        )
        driver.get(f"{url}/runs/{run_id}")
        wait_until(
            driver,
            "round 1 while the run runs",
            lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.round[data-round="1"]') and final(d) == "0",
            600,
        )
        screenshot(driver, "deployed-run-live", shots)
        wait_until(driver, "the run to finish", lambda d: final(d) == "1", 600)
        assert [r.get_attribute("data-status") for r in rows(driver, "rounds")] == ["completed"] * 2
        # epsilon per round is what the site's own ledger says
        ledger = ledger_epsilons(federation.root / "state-img", run_id)
        shown = epsilon_cells(driver, "img")
        assert set(shown) == {1, 2} and shown == pytest.approx(ledger, rel=1e-9)
        screenshot(driver, "deployed-run", shots)
        driver.get(f"{url}/")
        spent = driver.find_element(By.CSS_SELECTOR, f"{site} td.epsilon").text
        assert spent == f"{ledger[2]:.3f} / 8.0"
        assert driver.find_elements(By.CSS_SELECTOR, "table#certificates tr")
        screenshot(driver, "deployed-overview", shots)
