"""Shared by the deployment tests: a coordinator daemon and site agents as real processes on
loopback, driven through the ``mmfl`` CLI as an operator and a site's IT would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from helpers import small_spec
from mmfl.paths import mmfl_home
from mmfl.ports import free_port
from mmfl.simulation.plan import build_plan

SITES = {"img": ["image"], "txt": ["text"], "pair": ["image", "text"]}
RUN_SPEC = """\
name = "deployed"
rounds = {rounds}
strategy = "{strategy}"
sites = []

[train]
local_epochs = 1

[server]
architectures = {{ image = "cnn-small", text = "glove-mlp-large" }}
epochs_per_round = 1
min_sites = 1
round_timeout = {round_timeout}

[cream]
public_subset = 200

[delivery]
select = {select}
"""


def mmfl(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise AssertionError(f"mmfl {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out


def wait_for(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Federation:
    def __init__(self, root: Path, public_port: int) -> None:
        self.root = root
        self.server = root / "server"
        self.public_port = public_port

    def status(self) -> dict:
        return json.loads(mmfl("server", "status", "--dir", str(self.server), "--json").stdout)

    def submit(
        self, rounds: int, round_timeout: float = 600, select: bool = False, strategy: str = "cream+"
    ) -> str:
        """Submit a run; ``select``: build the site-free controls and deliver the better."""
        spec = self.root / f"run-{rounds}-{'select' if select else 'plain'}-{strategy}.toml"
        spec.write_text(
            RUN_SPEC.format(
                rounds=rounds, round_timeout=round_timeout, select=str(select).lower(), strategy=strategy
            )
        )
        return (
            mmfl("server", "run", "submit", str(spec), "--dir", str(self.server))
            .stdout.strip()
            .splitlines()[-1]
        )

    def summary(self, run_id: str) -> Path:
        return self.server / "runs" / run_id / "summary.json"

    def daemon_pid(self) -> int | None:
        try:
            return int((self.server / "daemon.pid").read_text())
        except (OSError, ValueError):
            return None


def start_federation(
    root: Path, sites: dict[str, list[str]], launcher: str = "warm", extra: tuple[str, ...] = ()
) -> Iterator[Federation]:
    """Init and start a daemon, split the digits pool across ``sites``, register them and start
    their agents (with this ClientApp ``launcher``) side by side; stop everything afterwards."""
    fed = Federation(root, free_port())
    mmfl(
        "server",
        "init",
        "--dir",
        str(fed.server),
        "--public-host",
        "127.0.0.1",
        "--public-port",
        str(fed.public_port),
        "--superlink-port",
        str(free_port()),
    )
    mmfl("server", "start", "--dir", str(fed.server), timeout=120)
    try:  # from here on, whatever fails stops what was started
        # The sites' private data: the digits pool split across three sites of three kinds.
        sites_spec = (
            "sites=["
            + ", ".join(
                f'{{id = "{s}", modalities = {json.dumps(m)}, architectures = {{{", ".join(f"{x} = " + json.dumps("mlp" if x == "image" else "bag") for x in m)}}}}}'
                for s, m in sites.items()
            )
            + "]"
        )
        build_plan(small_spec(sites_spec), root / "partition")
        public = mmfl_home() / "data" / "digits" / "public.jsonl"
        starts = []
        for site in sites:
            mmfl("client", "keygen", "--out", str(root / "keys"), "--name", site)
            mmfl(
                "server", "register-site", site, str(root / "keys" / f"{site}.pub"), "--dir", str(fed.server)
            )
            args = [
                "client",
                "start",
                "--server",
                f"127.0.0.1:{fed.public_port}",
                "--data",
                str(root / "partition" / "sites" / site / "data.jsonl"),
                "--public",
                str(public),
                "--data-root",
                str(public.parent),
                "--state",
                str(root / f"state-{site}"),
                "--ca",
                str(fed.server / "tls" / "ca.crt"),
                "--key",
                str(root / "keys" / site),
                "--arch",
                "image=mlp",
                "--arch",
                "text=bag",
                "--launcher",
                launcher,
                *extra,
            ]
            # The three agents start (validate their data, then detach) side by side.
            starts.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mmfl.cli", *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in starts:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"mmfl client start failed: {err[-2000:]}"
        yield fed
    finally:
        stops = [
            subprocess.Popen(
                [sys.executable, "-m", "mmfl.cli", "client", "stop", "--state", str(root / f"state-{s}")]
            )
            for s in sites
        ]
        for proc in stops:
            proc.wait(timeout=120)
        mmfl("server", "stop", "--dir", str(fed.server), check=False)
