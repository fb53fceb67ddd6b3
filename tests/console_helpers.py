"""Shared by the console tests: the runs they show, the console as a real process (or a
server thread over a source), and a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmfl.ports import free_port
from mmfl.server.records import RoundRecord, ServerMetrics, SiteReport
from mmfl.server.store import RunStore, open_store

FINGERPRINT = "f" * 64
FAILED = "0 sites accepted, fewer than the minimum of 1"

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS_ENV = "MMFL_CONSOLE_SCREENSHOTS"
"""A folder to copy the tests' screenshots into (e.g. ``docs/console``); unset: tmp only."""


def finished_summary(run_id: str, sites: list[dict]) -> str:
    """A finished run's ``summary.json`` text: ``sites`` as ``{"id", "modalities", "privacy"}``
    (the privacy as the site last reported it), the public set :data:`FINGERPRINT`."""
    from helpers import tiny_summary
    from mmfl.protocols.messages import DeviceInfo, PrivacyStatus
    from mmfl.protocols.summary import SiteSummary

    summary = tiny_summary("cream", 0, [(100.0, 180.0)])
    return summary.model_copy(
        update={
            "run_id": run_id,
            "dataset": summary.dataset.model_copy(update={"public_fingerprint": FINGERPRINT}),
            "sites": [
                SiteSummary(
                    id=s["id"],
                    modalities=s["modalities"],
                    architectures={},
                    private_samples=None,
                    device=DeviceInfo(kind="cpu", name="cpu"),
                    privacy=PrivacyStatus.model_validate(s["privacy"]),
                )
                for s in sites
            ],
        }
    ).to_json()


def caps(site: str, modalities: list[str], dp: bool) -> dict:
    return {
        "site_id": site,
        "modalities": modalities,
        "device": {"kind": "cpu", "name": "x86_64", "memory_gb": 16.0},
        "public_fingerprint": FINGERPRINT,
        "privacy": {
            "enabled": dp,
            "target_epsilon": 8.0 if dp else None,
            "epsilon_spent": 0.5 if dp else 0.0,
        },
    }


def metrics(rsum: float) -> ServerMetrics:
    block = {"rsum": rsum, "image-text/rsum": rsum, "image-text/image2text_r1": 10.0}
    return ServerMetrics(train_loss=2.5, distill_loss=0.1, val=dict(block), test=block)


def write_runs(url: str) -> None:
    """Two runs: ``live`` (round 1 completed, round 2 failed, a DP site, still running) and an
    older finished ``done``."""
    engine = open_store(url)
    done = RunStore(engine, "done")
    done.start("done", "cream", "digits", 0, {"rounds": 1}, "/out/done")
    done.add_site("txt", caps("txt", ["text"], False))
    done.add_round(
        RoundRecord(
            round=1, server=metrics(150.0), sites=[SiteReport(site_id="txt", node_id=2, accepted=True)]
        )
    )
    done.finish("completed", {})
    time.sleep(0.05)
    live = RunStore(engine, "live")
    live.start("live", "cream+", "digits", 1, {"rounds": 3}, "/out/live")
    live.add_site("img", caps("img", ["image"], True))
    live.add_site("txt", caps("txt", ["text"], False))
    live.add_round(
        RoundRecord(
            round=1,
            server=metrics(200.0),
            wall_seconds=4.0,
            sites=[
                SiteReport(
                    site_id="img", node_id=1, accepted=True, epsilon=1.25, bytes_down=1000, bytes_up=500
                ),
                SiteReport(site_id="txt", node_id=2, accepted=True, bytes_down=1000, bytes_up=400),
            ],
        )
    )
    failed = RoundRecord(
        round=2,
        sites=[
            SiteReport(site_id="img", node_id=1, reason="error reply: privacy budget of 8 would be exceeded"),
            SiteReport(site_id="txt", node_id=2, reason="no reply within 15 s"),
        ],
    )
    failed.fail(FAILED)
    live.add_round(failed)
    live.event("round-failed", f"round 2: {FAILED}")  # as the round pipeline reports it
    live.event("resume", "resumed after round 1 from round-0001.pt")
    live.event(
        "privacy-rollback", "site img reports epsilon spent 0.1, less than the 1.25 it reported before"
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextmanager
def console_process(*args: str, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """``mmfl server console ARGS`` on a free port; yields its base URL; stops it by its pid."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfl.cli", "server", "console", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not port_open(port, "127.0.0.1" if host in ("0.0.0.0", "::") else host):
            if proc.poll() is not None:
                raise AssertionError(f"the console exited: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the console did not listen within 90 s")
            time.sleep(0.2)
        scheme = "https" if "--token-file" in args else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def console_thread(source, refresh: float = 0.5) -> Iterator[str]:  # noqa: ANN001 - a Source
    """The console app over ``source`` served by uvicorn in a thread on a free loopback port
    (quicker than a process; the tests that need the command use :func:`console_process`);
    yields its base URL and stops the server."""
    import threading

    from mmfl.server.console.app import create_app
    from mmfl.server.console.cli import uvicorn_server
    from mmfl.server.console.security import plan_exposure

    exposure = plan_exposure("127.0.0.1", free_port(), None, None, None)
    server = uvicorn_server(create_app(source, refresh), exposure)
    thread = threading.Thread(target=server.run, name="console-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the console did not start on {exposure.url}")
            time.sleep(0.05)
        yield exposure.url.rstrip("/")
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium through the system chromedriver (Selenium Manager never downloads)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium is missing: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, what: str, predicate: Callable[[object], object], timeout: float = 60) -> object:  # noqa: ANN001
    """``predicate(driver)`` until it is truthy (exceptions count as not yet)."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d: object) -> object:
        try:
            return predicate(d)
        except (WebDriverException, AssertionError, ValueError, KeyError):
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(safe)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def screenshot(driver, name: str, folder: Path) -> Path:  # noqa: ANN001
    """A full-page PNG of the current page in ``folder`` (and in $MMFL_CONSOLE_SCREENSHOTS)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    width = int(driver.execute_script("return window.innerWidth"))
    driver.set_window_size(max(width, 1400), min(max(height + 200, 600), 4000))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get(SHOTS_ENV):
        target = Path(os.environ[SHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


def rows(driver, table: str) -> list:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f"table#{table} tbody tr")


def https_status(url: str, ca: Path, headers: dict[str, str] | None = None) -> int:
    """The status of a GET over TLS checked against ``ca``."""
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(
            request, context=ssl.create_default_context(cafile=str(ca)), timeout=10
        ) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def ledger_epsilons(state: Path, run_id: str) -> dict[int, float]:
    """Epsilon after each round of ``run_id`` in a site's own privacy ledger."""
    import json

    ledger = json.loads((state / "privacy" / "ledger.json").read_text())
    return {e["round"]: e["epsilon_after"] for e in ledger["entries"] if e["run_id"] == run_id}


def epsilon_cells(driver, site: str) -> dict[int, float]:  # noqa: ANN001
    """The run page's epsilon per round for ``site`` (the exact values behind the rounded text)."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f'table#privacy tr[data-site="{site}"] td.eps')
    return {
        int(c.get_attribute("data-round")): float(c.get_attribute("data-epsilon"))
        for c in cells
        if c.get_attribute("data-epsilon")
    }
