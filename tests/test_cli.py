"""The ``mmfl`` command: help on every sub-command; failures are one line with status 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def mmfl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmfl.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["data", "--help"], ["data", "prepare", "--help"], ["data", "validate", "--help"]]
)
def test_help(args: list[str]) -> None:
    out = mmfl(*args)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_the_command_line_starts_without_torch() -> None:
    """Issue 36: a progress line within about a second of start. `mmfl` used to import torch,
    Flower's strategies and the model code (3-5 s on 2 cores) before any command ran; they load
    where a command needs them, after its first line."""
    probe = "import sys, mmfl.cli; print(sorted(m for m in ('torch', 'mmfl.client.privacy.budget', 'mmfl.inference.trained') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_manifest_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,image,text\n1,nope.png,hello\n2,,\n")
    out = mmfl("data", "validate", str(tmp_path / "m.csv"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert (
        "line 2 (id 1): image file not found" in lines[0] and "line 3 (id 2): no modality present" in lines[0]
    )


def test_prepare_openclipart_writes_manifest_of_real_files(openclipart_root: Path, tmp_path: Path) -> None:
    out = mmfl(
        "data", "prepare", "openclipart", "--out", str(tmp_path / "oc"), "--source", str(openclipart_root)
    )
    assert out.returncode == 0, out.stderr
    assert "public" in out.stdout and "1500" in out.stdout and "test" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "oc" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1000
    assert all(Path(r["image"]).is_file() and r["text"].strip() and r["label"] for r in rows)
    check = mmfl("data", "validate", str(tmp_path / "oc" / "public.jsonl"), "--require-label")
    assert check.returncode == 0 and "ok: 1500 rows" in check.stdout


def test_unknown_data_set_is_refused() -> None:
    out = mmfl("data", "prepare", "cifar")
    assert out.returncode == 2 and "unknown data set 'cifar'" in out.stderr


def test_runs_on_a_damaged_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite").write_text("not a database at all, just text " * 40)
    out = mmfl("runs", "list", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mmfl: error: run store {(tmp_path / 'runs.sqlite').resolve()} is not a SQLite database; restore it "
        "from a backup, or move it aside to start an empty store on purpose"
    ]
    out = mmfl("runs", "list", str(tmp_path / "nothing-here"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_server_status_on_a_damaged_run_store_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    done = mmfl("server", "init", "--dir", str(folder), "--name", "localhost", "--ip", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    (folder / "runs.sqlite").write_text("not a database " * 50)
    out = mmfl("server", "status", "--dir", str(folder))
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("mmfl: error: run store") and "is not a SQLite database; restore it" in line
    # F7: a run submitted onto it is refused up front (it used to print a run id and die later).
    spec = tmp_path / "run.toml"
    spec.write_text('name = "x"\nrounds = 1\n')
    out = mmfl("server", "run", "submit", str(spec), "--dir", str(folder))
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("mmfl: error: run store") and not any((folder / "runs").iterdir())


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_a_read_only_ledger_is_one_line_and_unchanged(tmp_path: Path) -> None:
    """F7: an operator action on a ledger mmfl may not write names the file (was a Python repr)."""
    from mmfl.client.privacy.budget import PrivacyBudget
    from mmfl.config import PrivacyConfig

    budget = PrivacyBudget(tmp_path, "site-a", PrivacyConfig(enabled=True, target_epsilon=8.0))
    budget.open("d" * 64, 600)
    (tmp_path / "site.toml").write_text(
        'manifest = "m.jsonl"\npublic_manifest = "p.jsonl"\n'
        f'state_dir = "{tmp_path}"\n'
        '[site]\nid = "site-a"\nmodalities = ["image"]\narchitectures = { image = "mlp" }\n'
        "privacy = { enabled = true, target_epsilon = 8.0 }\n"
    )
    folder = tmp_path / "privacy"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for p in [*folder.iterdir(), folder]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        # Without CAP_DAC_OVERRIDE even root meets the file modes.
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "mmfl.cli",
             "client", "ledger-raise", "--config", str(tmp_path / "site.toml"), "--to", "9", "--reason", "x"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"mmfl: error: Permission denied: {folder / 'ledger.lock'}"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_client_ledger_checks_the_seal_of_the_sites_key(tmp_path: Path) -> None:
    """Issue 13: `mmfl client ledger` verifies as training does, with the key named in site.toml."""
    from mmfl.client.privacy.budget import PrivacyBudget
    from mmfl.config import PrivacyConfig
    from mmfl.pki import create_site_keys

    key, _ = create_site_keys(tmp_path / "keys", "site-a")
    state = tmp_path / "state"
    PrivacyBudget(state, "site-a", PrivacyConfig(enabled=True, target_epsilon=8.0), key).open("d" * 64, 600)
    (state / "site.toml").write_text(
        f'manifest = "m.jsonl"\npublic_manifest = "p.jsonl"\nstate_dir = "{state}"\nledger_key = "{key}"\n'
        '[site]\nid = "site-a"\nmodalities = ["image"]\narchitectures = { image = "mlp" }\n'
    )
    shown = mmfl("client", "ledger", "--state", str(state))
    assert shown.returncode == 0 and "site-a: privacy ledger" in shown.stdout, shown.stderr
    ledger = state / "privacy" / "ledger.json"
    raw = json.loads(ledger.read_text())
    raw["budget"] = 80.0
    data = json.dumps(raw).encode()
    ledger.write_bytes(data)
    import hashlib

    (state / "privacy" / "ledger.sha256").write_text(hashlib.sha256(data).hexdigest())
    refused = mmfl("client", "ledger", "--state", str(state))
    assert refused.returncode == 2
    assert (
        len(refused.stderr.strip().splitlines()) == 1 and "changed without this site's key" in refused.stderr
    )


def test_server_start_refuses_ports_another_process_holds(tmp_path: Path) -> None:
    """F4: the readiness probe used to be answered by the other listener, and start said ok."""
    import socket

    folder = tmp_path / "srv"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for flag in ("--public-port", "--superlink-port"):
            done = mmfl(
                "server",
                "init",
                "--dir",
                str(folder),
                "--public-host",
                "127.0.0.1",
                flag,
                str(port),
                "--force",
            )
            assert done.returncode == 0, done.stderr
            out = mmfl("server", "start", "--dir", str(folder))
            setting = flag.removeprefix("--").replace("-", "_")
            assert out.returncode == 2 and out.stderr.strip().splitlines() == [
                f"mmfl: error: {setting} 127.0.0.1:{port} is already in use by another process "
                f"(Address already in use); stop it or choose another {setting} in server.toml"
            ]
            assert not (folder / "daemon.pid").exists()


def test_nginx_settings_that_could_expose_more_than_the_fleet_api_are_refused(tmp_path: Path) -> None:
    from mmfl.config import DaemonConfig, load_config
    from mmfl.errors import ConfigError, MmflError
    from mmfl.server.daemon import ServerLayout, Supervisor

    folder = tmp_path / "srv"
    assert mmfl("server", "init", "--dir", str(folder)).returncode == 0
    config = folder / "server.toml"
    original = config.read_text()
    for extra, word in (
        ("location /v1/control { proxy_pass https://127.0.0.1:9092; }", "location"),
        ("include /etc/nginx/snippets/*.conf;", "include"),
        ("add_header X-Debug /v1/runtime;", "Control or Runtime API"),
    ):
        config.write_text(re.sub(r"(?m)^nginx_extra = .*$", f"nginx_extra = '{extra}'", original))
        with pytest.raises(ConfigError, match=word):
            load_config(DaemonConfig, config)
        out = mmfl("server", "start", "--dir", str(folder))
        assert (
            out.returncode == 2 and "nginx_extra" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        )
    # A directive nginx itself refuses is named with its line (it used to show only "test failed").
    config.write_text(re.sub(r"(?m)^nginx_extra = .*$", "nginx_extra = 'frobnicate on;'", original))
    with pytest.raises(
        MmflError,
        match=r'nginx refused its configuration: .*unknown directive "frobnicate" in .*nginx.conf:\d+',
    ):
        supervisor = Supervisor(ServerLayout(folder))
        supervisor._check_proxy_conf(supervisor._nginx_conf())


@pytest.mark.parametrize("name", ["../alice", "alice bob", "_alice", "a" * 65, "alice\n"])
def test_register_site_refuses_a_name_a_site_could_not_carry(tmp_path: Path, name: str) -> None:
    out = mmfl("server", "register-site", name, str(tmp_path / "k.pub"), "--dir", str(tmp_path))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "must be 1-64 letters" in out.stderr
    assert not (tmp_path / "sites.json").exists()
