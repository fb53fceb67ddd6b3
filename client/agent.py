"""The site agent: validates the site's data and the public set, then supervises
``flower-supernode`` and reconnects with back-off when the coordinator is away.

The state folder holds ``site.toml`` (the site's configuration, which the ClientApp reads via
the SuperNode's node config), the models, the privacy ledger, the audit log, ``agent.log``,
``agent.pid`` and ``supernode.pid``.

ClientApps run warm by default: the SuperNode (Flower's, through :mod:`mmfl.client.supernode`
for a shorter idle wait) runs with ``--isolation process`` and
:mod:`mmfl.client.warm_launcher` (started beside it, in its process group) forks each message's
ClientApp from a process that has torch, Flower and mmfl imported already; ``launcher =
"flower"`` keeps Flower's own launcher (a fresh ``flwr-clientapp`` process per message). The
Runtime API between them stays on loopback and asks for ``superexec.secret`` (0600).

A SuperNode never outlives its agent: the kernel sends it SIGTERM when the agent dies, even by
SIGKILL (``PR_SET_PDEATHSIG``), and a new agent or ``mmfl client stop`` ends one that a crash
left behind anyway (found by ``supernode.pid`` and its command line naming this site).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmfl.client.public_set import load_public_set
from mmfl.config import SiteConfig, dump_toml
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import read_dataset_info
from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes, atomic_write_text
from mmfl.flower_runtime import flower_bin, flower_env
from mmfl.ports import free_port

MAX_BACKOFF = 60.0
LAUNCHERS = ("warm", "flower")
TERMINATED = b"SuperNode terminated"
UNREGISTERED = b"403 Forbidden' for url 'https://"
# Opacus' per-sample buffers churn glibc's mmap/munmap on CPU; these keep freed memory mapped
# (measured: hooks 184 -> 41 ms per step).
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "1073741824",
}


def validate_inputs(config: SiteConfig) -> str:
    """Load both manifests (every row checked) and the public set's description; returns a
    one-line account. Raises MmflError naming what is wrong."""
    info = read_dataset_info(config.public_manifest.parent)
    public = load_public_set(config, info.modalities)
    private = load_manifest(config.manifest, info.modalities, root=config.data_folder)
    missing = [m for m in config.site.modalities if private.count(m) == 0]
    if missing:
        raise MmflError(f"the site declares modality {missing[0]!r} but {config.manifest} holds none")
    if (
        config.site.privacy.enabled
        and config.site.privacy.unit == "group"
        and any(s.group is None for s in private.samples)
    ):
        raise MmflError(f"group-level privacy needs a group id on every row of {config.manifest}")
    return (
        f"{len(private)} private samples ({', '.join(f'{m} {private.count(m)}' for m in config.site.modalities)}), "
        f"public set {public.fingerprint()[:16]} ({len(public)} rows)"
    )


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (the agent) dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def supernode_of(state: Path) -> int | None:
    """The pid of a live SuperNode started for ``state`` (its process group), or None."""
    try:
        pid = int((state / "supernode.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    mine = any(b"flower-supernode" in part or b"mmfl.client.supernode" in part for part in cmdline) and any(
        str(state / "site.toml").encode() in part for part in cmdline
    )
    return pid if mine else None


def stop_process_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM the group led by ``pid``, then SIGKILL what is left after ``timeout`` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Agent:
    """Runs ``flower-supernode`` for this site until stopped; restarts it with exponential
    back-off (capped at a minute) when it exits, e.g. because the coordinator is away."""

    def __init__(self, config_path: Path, server: str, ca: Path, key: Path, launcher: str = "warm") -> None:
        if launcher not in LAUNCHERS:
            raise MmflError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
        self.config_path = config_path
        self.server, self.ca, self.key = server, ca, key
        self.launcher = launcher
        self.state = config_path.parent
        self.secret = self.state / "superexec.secret"
        self.log = logging.getLogger("mmfl.client.agent")
        self._stopping = False
        self.proc: subprocess.Popen | None = None

    def command(self, port: int) -> list[str]:
        # warm: Flower's SuperNode through mmfl.client.supernode (a shorter idle wait)
        supernode = (
            [sys.executable, "-m", "mmfl.client.supernode"]
            if self.launcher == "warm"
            else [flower_bin("flower-supernode")]
        )
        return [
            *supernode,
            "--root-certificates",
            str(self.ca),
            "--auth-supernode-private-key",
            str(self.key),
            "--superlink",
            self.server,
            "--port",
            str(port),
            "--node-config",
            f'site-config="{self.config_path}"',
            *(
                ["--isolation", "process", "--superexec-auth-secret-file", str(self.secret)]
                if self.launcher == "warm"
                else []
            ),
        ]

    def launcher_command(self, port: int, supernode_pid: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mmfl.client.warm_launcher",
            "--runtime-api-address",
            f"127.0.0.1:{port}",
            "--parent-pid",
            str(supernode_pid),
            "--superexec-auth-secret-file",
            str(self.secret),
            "--site-config",
            str(self.config_path),
        ]

    def env(self) -> dict[str, str]:
        return flower_env(self.state / "flwr-home", MALLOC_TUNING)

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> None:
        os.umask(0o077)  # what the SuperNode and its ClientApps write is owner-only
        atomic_write_text(self.state / "agent.pid", f"{os.getpid()}\n")
        orphan = supernode_of(self.state)
        if orphan is not None:
            # Its key would hold the node: the new SuperNode could never activate.
            self.log.warning("stopping SuperNode pid %d left running by an earlier agent", orphan)
            stop_process_group(orphan)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        backoff = 1.0
        try:
            while not self._stopping:
                started = time.monotonic()
                code = self._run_once()
                if self._stopping:
                    break
                backoff = 1.0 if time.monotonic() - started > 120 else min(MAX_BACKOFF, backoff * 2)
                self.log.warning("flower-supernode ended (%s); reconnecting in %.0f s", code, backoff)
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not self._stopping:
                    time.sleep(0.2)
        finally:
            self._kill()
            (self.state / "agent.pid").unlink(missing_ok=True)

    def _run_once(self) -> str:
        """Run one SuperNode until it exits, or until it says it terminated (it can then hang
        in interpreter shutdown without exiting, which would stall the reconnect)."""
        log_path = self.state / "supernode.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        port = free_port()
        if self.launcher == "warm":
            atomic_write_bytes(self.secret, secrets.token_bytes(32))  # fresh for each SuperNode
            self.secret.chmod(0o600)
        with log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.command(port),
                env=self.env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                process_group=0,  # its own group (no terminal signals), in the agent's session
                preexec_fn=_die_with_parent,
            )
            if self.launcher == "warm":
                # In the SuperNode's process group: stopped with it, and it stops with it.
                subprocess.Popen(
                    self.launcher_command(port, self.proc.pid),
                    env=self.env(),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    process_group=self.proc.pid,
                    preexec_fn=_die_with_parent,
                )
        atomic_write_text(self.state / "supernode.pid", f"{self.proc.pid}\n")
        self.log.info("flower-supernode pid %d connecting to %s", self.proc.pid, self.server)
        warned = False
        while not self._stopping:
            code = self.proc.poll()
            if code is not None:
                return f"exit status {code}"
            with log_path.open("rb") as fh:
                fh.seek(offset)
                fresh = fh.read()
            if UNREGISTERED in fresh and not warned:
                warned = True  # Flower keeps retrying; say once what is wrong
                self.log.error(
                    "the coordinator refuses this site's key (403 at activate-node): it is not "
                    "registered there, or was revoked; the operator runs `mmfl server register-site "
                    "NAME KEY.pub` (a revoked key needs a new one: mmfl client keygen)"
                )
            if TERMINATED in fresh:
                time.sleep(2.0)  # let it exit on its own first
                self._kill()
                return "terminated"
            time.sleep(1.0)
        return "stopped"

    def _kill(self) -> None:
        """Stop the SuperNode and its helper processes (their own process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        (self.state / "supernode.pid").unlink(missing_ok=True)


def write_site_config(config: SiteConfig) -> Path:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.state_dir.chmod(0o700)  # the ledger, the audit log, the models: the site's IT only
    path = config.state_dir / "site.toml"
    atomic_write_text(path, dump_toml(config))
    return path
