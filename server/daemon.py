"""The operator's coordinator daemon: supervises ``flower-superlink`` and nginx.

The server folder (``mmfl server init``) holds everything::

    server.toml          DaemonConfig
    tls/                 ca.crt ca.key (the federation CA), superlink.pem/.key (loopback),
                         proxy.pem/.key (public names)
    state/superlink.db   the SuperLink's state (runs, nodes) across restarts
    flwr-home/           the flwr CLI's connection to the loopback SuperLink
    nginx/               rendered nginx.conf and its temp folders
    logs/                daemon.log, superlink.log, nginx-error.log, nginx-access.log
    runs/RUN/            each run's plan, output, checkpoints, summary.json, evidence.json
    runs.sqlite          the run store (unless server.toml names a PostgreSQL URL)
    sites.json           registered site keys
    daemon.pid

The SuperLink listens on 127.0.0.1 with TLS and SuperNode authentication, runtime dependency
installation off and telemetry off; nginx exposes only the Fleet API on the public address.
A SuperLink that dies is restarted after ``restart_delay`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmfl.config import DaemonConfig, dump_toml, load_config
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text
from mmfl.flower_runtime import flower_bin, flower_env
from mmfl.pki import create_ca, flower_key_header, issue_server_certificate
from mmfl.processes import running
from mmfl.server import nginx
from mmfl.server.signature_gate import SignatureGate
from mmfl.server.store import store_url

CONNECTION = "mmfl-local"


@dataclass(frozen=True)
class ServerLayout:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "server.toml"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def pid_file(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def reload_file(self) -> Path:
        """The daemon's verdict on the last ``mmfl server reload``."""
        return self.root / "state" / "reload.json"

    @property
    def sites_file(self) -> Path:
        return self.root / "sites.json"

    def config(self) -> DaemonConfig:
        if not self.config_path.exists():
            raise MmflError(f"{self.root} is not a server folder (run `mmfl server init --dir {self.root}`)")
        return load_config(DaemonConfig, self.config_path)

    def store(self) -> str:
        return self.config().store_url or store_url(self.root / "runs.sqlite")


def init_server(root: Path, config: DaemonConfig, force: bool = False) -> ServerLayout:
    """Create the CA, the SuperLink's and the proxy's certificates, and ``server.toml``."""
    layout = ServerLayout(root.resolve())
    if layout.config_path.exists() and not force:
        raise MmflError(
            f"{layout.root} already holds a server (server.toml); pass --force to replace its keys"
        )
    create_ca(layout.tls)
    issue_server_certificate(
        layout.tls, layout.tls, "superlink", config.superlink_names, ["127.0.0.1", "::1"]
    )
    issue_server_certificate(layout.tls, layout.tls, "proxy", config.names, config.ips)
    for folder in (layout.logs, layout.runs, layout.root / "state", layout.root / "nginx", layout.flwr_home):
        folder.mkdir(parents=True, exist_ok=True)
    restrict(layout)
    atomic_write_text(layout.config_path, dump_toml(config))
    write_cli_config(layout, config)
    return layout


PRIVATE_FOLDERS = ("logs", "runs", "state", "tls", "flwr-home")
"""Readable by the operator alone: run results, the SuperLink's node keys and in-flight
messages, logs, private keys. (``nginx/`` stays traversable: nginx's workers write their
temporary files there.)"""


def restrict(layout: ServerLayout) -> None:
    """Owner-only modes on the private folders and the SQLite run store (0700 / 0600); the
    daemon also runs with umask 077, so what its processes create later is owner-only too."""
    for name in PRIVATE_FOLDERS:
        if (layout.root / name).is_dir():
            (layout.root / name).chmod(0o700)
    for path in (layout.root / "runs.sqlite", layout.sites_file):
        if path.exists():
            path.chmod(0o600)


def write_cli_config(layout: ServerLayout, config: DaemonConfig) -> None:
    atomic_write_text(
        layout.flwr_home / "config.toml",
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{config.superlink_port}"\nroot-certificates = "{layout.tls / "ca.crt"}"\n',
    )


def flwr(layout: ServerLayout, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The flwr CLI against the loopback SuperLink (the Control API never leaves the host)."""
    return subprocess.run(
        [flower_bin("flwr"), *args],
        env=flower_env(layout.flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def check_port_free(port: int, host: str, setting: str) -> None:
    """Raise unless ``host:port`` can be bound: a readiness probe alone would be answered by
    whatever else listens there (another federation's SuperLink or nginx)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, not listeners
        try:
            s.bind((host, port))
        except OSError as exc:
            raise MmflError(
                f"{setting} {host}:{port} is already in use by another process ({exc.strerror}); "
                f"stop it or choose another {setting} in server.toml"
            ) from None


def last_line(path: Path, marker: str = "") -> str:
    """The last line of a log holding ``marker`` (or the last line), for one-line errors."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    chosen = [ln for ln in lines if marker in ln] if marker else lines
    return (chosen or lines or ["(no output)"])[-1].strip()


def daemon_pid(layout: ServerLayout) -> int | None:
    """The running daemon's pid, or None (a stale pid file is ignored)."""
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if running(pid) else None


class Supervisor:
    """Runs in the foreground: starts the SuperLink and nginx, restarts the SuperLink if it dies,
    stops both on SIGTERM or SIGINT."""

    def __init__(self, layout: ServerLayout) -> None:
        self.layout = layout
        self.config = layout.config()
        self.log = logging.getLogger("mmfl.server.daemon")
        self.superlink: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self._stopping = False
        self._reload_requested = False
        self.gate: SignatureGate | None = None

    def _open_gate(self) -> SignatureGate:
        """The signature gate, listening (not yet serving) from the first call on."""
        if self.gate is not None:
            return self.gate
        if not self.config.manage_proxy and self.config.gate_port == 0:
            raise MmflError(
                "gate_port: set a fixed port where nginx runs elsewhere (deploy/compose.yaml uses 9093)"
            )
        try:
            self.gate = SignatureGate(self.config.gate_host, self.config.gate_port)
            return self.gate
        except OSError as exc:
            raise MmflError(
                f"gate_port: cannot listen on {self.config.gate_host}:{self.config.gate_port} ({exc.strerror})"
            ) from None

    def _superlink_cmd(self) -> list[str]:
        t = self.layout.tls
        return [
            flower_bin("flower-superlink"),
            "--ssl-ca-certfile",
            str(t / "ca.crt"),
            "--ssl-certfile",
            str(t / "superlink.pem"),
            "--ssl-keyfile",
            str(t / "superlink.key"),
            "--enable-supernode-auth",
            "--host",
            self.config.superlink_host,
            "--port",
            str(self.config.superlink_port),
            "--database",
            str(self.layout.root / "state" / "superlink.db"),
            "--disable-runtime-dependency-installation",
            "--log-file",
            str(self.layout.logs / "superlink.log"),
        ]

    def _refresh_keys(self) -> list[str]:
        """The registered, unrevoked sites' ``flwr-public-key`` headers, handed to the gate."""
        keys = [
            flower_key_header(s["public_key"].encode())
            for s in registered_sites(self.layout).values()
            if not s.get("revoked")
        ]
        if self.gate is not None:
            self.gate.set_keys(keys)
        return keys

    def _nginx_conf(self) -> Path:
        prefix = self.layout.root / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        paths = nginx.ProxyPaths(
            prefix=prefix,
            pid=prefix / "nginx.pid",
            error_log=self.layout.logs / "nginx-error.log",
            access_log=self.layout.logs / "nginx-access.log",
            proxy_cert=self.layout.tls / "proxy.pem",
            proxy_key=self.layout.tls / "proxy.key",
            upstream_ca=self.layout.tls / "ca.crt",
        )
        listen = f"{self.config.public_host}:{self.config.public_port}"
        if ":" in self.config.public_host:
            listen = f"[{self.config.public_host}]:{self.config.public_port}"
        conf = prefix / "nginx.conf"
        keys = self._refresh_keys()
        gate = self._open_gate()
        atomic_write_text(
            conf,
            nginx.render(
                paths,
                listen,
                f"127.0.0.1:{self.config.superlink_port}",
                gate.address,
                self.config.max_body_size,
                self.config.nginx_extra,
                self.config.superlink_names[0],
                known_keys=keys,
                requests_per_second=self.config.requests_per_second,
                connections_per_client=self.config.connections_per_client,
            ),
        )
        return conf

    def _start_superlink(self) -> None:
        check_port_free(self.config.superlink_port, "127.0.0.1", "superlink_port")
        stdout = self.layout.logs / "superlink.stdout"
        self.superlink = subprocess.Popen(
            self._superlink_cmd(),
            env=flower_env(self.layout.flwr_home),
            stdout=stdout.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not port_open(self.config.superlink_port):
            if self.superlink.poll() is not None or time.monotonic() > deadline:
                # Start-up errors go to stdout, not to the --log-file.
                raise MmflError(f"flower-superlink did not start: {last_line(stdout)} (see {stdout})")
            time.sleep(0.2)
        self.log.info("SuperLink pid %d on 127.0.0.1:%d", self.superlink.pid, self.config.superlink_port)

    def _proxy_cmd(self, conf: Path) -> list[str]:
        return [
            self.config.nginx,
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
            "-e",
            str(self.layout.logs / "nginx-error.log"),
        ]

    def _check_proxy_conf(self, conf: Path) -> None:
        check = subprocess.run([*self._proxy_cmd(conf), "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            lines = check.stderr.strip().splitlines() or ["(no output)"]
            failing = [ln for ln in lines if "[emerg]" in ln] or lines
            raise MmflError(f"nginx refused its configuration: {failing[0]}")

    def _start_proxy(self) -> None:
        conf = self._nginx_conf()
        cmd = [*self._proxy_cmd(conf), "-g", "daemon off;"]
        self._check_proxy_conf(conf)
        check_port_free(self.config.public_port, self.config.public_host, "public_port")
        self.proxy = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=(self.layout.logs / "nginx-error.log").open("ab")
        )
        deadline = time.monotonic() + 20
        host = "127.0.0.1" if self.config.public_host in ("0.0.0.0", "::") else self.config.public_host
        while not port_open(self.config.public_port, host):
            if self.proxy.poll() is not None or time.monotonic() > deadline:
                log = self.layout.logs / "nginx-error.log"
                raise MmflError(f"nginx did not start: {last_line(log, '[emerg]')} (see {log})")
            time.sleep(0.1)
        self.log.info(
            "nginx pid %d on %s:%d (Fleet API only)",
            self.proxy.pid,
            self.config.public_host,
            self.config.public_port,
        )

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _request_reload(self, *_: object) -> None:
        self._reload_requested = True

    def _reload(self) -> None:
        """Re-read ``server.toml`` and reload nginx in place (no SuperLink restart, sites stay
        connected). Settings of the SuperLink itself need ``stop`` and ``start``."""
        self._reload_requested = False
        try:
            config = self.layout.config()
            restart_only = [
                k
                for k in ("superlink_host", "superlink_port", "public_host", "public_port")
                if getattr(config, k) != getattr(self.config, k)
            ]
            if restart_only:
                raise MmflError(f"{restart_only[0]} changed: stop and start the daemon to apply it")
            self.config = config
            self._refresh_keys()
            if self.proxy is not None:
                self._check_proxy_conf(self._nginx_conf())
                os.kill(self.proxy.pid, signal.SIGHUP)
            outcome = {"ok": True, "message": "reloaded"}
            self.log.info(
                "configuration reloaded; nginx pid %s reloads in place", getattr(self.proxy, "pid", None)
            )
        except MmflError as exc:
            outcome = {"ok": False, "message": str(exc)}
            self.log.error("reload refused: %s", exc)
        atomic_write_text(self.layout.reload_file, json.dumps({**outcome, "time": time.time()}) + "\n")

    def run(self) -> None:
        if daemon_pid(self.layout) not in (None, os.getpid()):
            raise MmflError(f"a daemon already runs for {self.layout.root} (pid {daemon_pid(self.layout)})")
        os.umask(0o077)  # inherited by the SuperLink, the ServerApps and nginx
        restrict(self.layout)
        atomic_write_text(self.layout.pid_file, f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        write_cli_config(self.layout, self.config)
        try:
            self._open_gate().start()
            self._refresh_keys()
            self.log.info("signature gate on %s", self._open_gate().address)
            self._start_superlink()
            if self.config.manage_proxy:
                self._start_proxy()
            while not self._stopping:
                time.sleep(0.5)
                if self._reload_requested:
                    self._reload()
                if self.superlink is not None and self.superlink.poll() is not None and not self._stopping:
                    self.log.warning(
                        "SuperLink exited with status %s; restarting in %.0f s",
                        self.superlink.returncode,
                        self.config.restart_delay,
                    )
                    time.sleep(self.config.restart_delay)
                    self._start_superlink()
                if self.proxy is not None and self.proxy.poll() is not None and not self._stopping:
                    self.log.warning("nginx exited with status %s; restarting", self.proxy.returncode)
                    self._start_proxy()
        finally:
            for proc in (self.proxy, self.superlink):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            for proc in (self.proxy, self.superlink):
                if proc is not None:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            if self.gate is not None:
                self.gate.stop()
            self.layout.pid_file.unlink(missing_ok=True)
            self.log.info("daemon stopped")


def start_detached(layout: ServerLayout, timeout: float = 90) -> int:
    """Start the supervisor in the background (its own session); wait until the public port
    answers. Returns its pid."""
    config = layout.config()
    if daemon_pid(layout):
        raise MmflError(f"a daemon already runs for {layout.root} (pid {daemon_pid(layout)})")
    layout.logs.mkdir(parents=True, exist_ok=True)
    check_port_free(config.superlink_port, "127.0.0.1", "superlink_port")
    if config.manage_proxy:
        check_port_free(config.public_port, config.public_host, "public_port")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfl.cli", "server", "start", "--dir", str(layout.root), "--foreground"],
        stdout=(layout.logs / "daemon.log").open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=flower_env(layout.flwr_home),
    )
    deadline = time.monotonic() + timeout
    host = "127.0.0.1" if config.public_host in ("0.0.0.0", "::") else config.public_host
    while not (port_open(config.public_port, host) and port_open(config.superlink_port)):
        if proc.poll() is not None:
            tail = last_line(layout.logs / "daemon.log").removeprefix("mmfl: error: ")
            raise MmflError(f"the daemon exited during start-up: {tail}")
        if time.monotonic() > deadline:
            raise MmflError(f"the daemon did not come up within {timeout:.0f} s; see {layout.logs}")
        time.sleep(0.2)
    return proc.pid


def reload_daemon(layout: ServerLayout, timeout: float = 30) -> dict:
    """Ask the running daemon to re-read its config (SIGHUP); returns its verdict."""
    layout.config()  # a bad config is refused here, before the daemon sees it
    pid = daemon_pid(layout)
    if pid is None:
        raise MmflError(f"no daemon runs for {layout.root}")
    before = layout.reload_file.read_text() if layout.reload_file.exists() else ""
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = layout.reload_file.read_text() if layout.reload_file.exists() else ""
        if now and now != before:
            return json.loads(now)
        time.sleep(0.2)
    raise MmflError(f"the daemon (pid {pid}) did not answer the reload within {timeout:.0f} s")


def stop_daemon(layout: ServerLayout, timeout: float = 40) -> bool:
    pid = daemon_pid(layout)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_pid(layout) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    return True


def registered_sites(layout: ServerLayout) -> dict[str, dict]:
    if not layout.sites_file.exists():
        return {}
    return json.loads(layout.sites_file.read_text(encoding="utf-8"))
