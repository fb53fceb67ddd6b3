"""Engines that run a plan: Flower's simulation engine, or in-process for tests and debugging.

Both run the same ServerApp round loop (:class:`~mmfl.server.loop.FederatedRun`) and the same
ClientApp handlers (:data:`mmfl.client.app.app`):

* ``flower``: a private ``flower-superlink --simulation`` on a free loopback port, and
  ``flwr run`` of the bundled app against it (Ray actors, one torch thread per ClientApp); the
  SuperLink is stopped afterwards, whatever happens.
* ``inprocess``: an in-memory :class:`InProcessGrid` that hands each message to the ClientApp
  in a thread pool (two sites at a time, one torch thread each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from mmfl.config import FederationSpec, RunPlan
from mmfl.errors import MmflError
from mmfl.flower_runtime import flower_bin, flower_env
from mmfl.ports import free_port
from mmfl.protocols.summary import RunSummary
from mmfl.server.loop import FederatedRun

STATUS_EVERY_SECONDS = 15.0
"""How often a Flower-engine run's status is asked before its summary is written."""

Progress = Callable[[dict[str, Any]], None]


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    pulls_never_block = True  # see mmfl.server.transport: polled in the caller's thread

    def __init__(self, contexts: dict[int, Context], workers: int = 2, site_threads: int = 1) -> None:
        from mmfl.client.app import app as client_app

        self.client_app = client_app
        self.contexts = contexts
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="site")
        self.site_threads = site_threads
        self._pending: dict[str, Future[Message]] = {}
        self._threads_before: int | None = None
        self._lock = threading.Lock()

    def set_run(self, run: Any) -> None:  # noqa: ANN401 - Flower's Run
        self._run = run

    @property
    def run(self) -> Any:  # noqa: ANN401
        return getattr(self, "_run", None)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _call(self, message: Message) -> Message:
        reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
        reply.metadata.__dict__["_reply_to_message_id"] = message.metadata.message_id
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        with self._lock:
            if not self._pending:  # sites train with one torch thread each, as Ray actors do
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(self.site_threads)
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                self._pending[msg.metadata.message_id] = self.pool.submit(self._call, msg)
                ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        with self._lock:
            for mid in list(message_ids):
                fut = self._pending.get(mid)
                if fut is not None and fut.done():
                    del self._pending[mid]
                    out.append(fut.result())
            if not self._pending and self._threads_before is not None:
                torch.set_num_threads(self._threads_before)
                self._threads_before = None
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while ids and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(ids))
            ids -= {r.metadata.reply_to_message_id for r in got}
            replies.extend(got)
            time.sleep(0.01)
        return replies

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _set_task_identity() -> None:
    """Building a flwr Message outside a Flower runtime needs a process-level identity."""
    from mmfl.flower_internals import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def run_control(spec: FederationSpec, folder: Path) -> RunSummary:
    """A site-free control of a run's delivery (:mod:`mmfl.server.delivery`), in this process,
    with its output in ``folder``."""
    from mmfl.simulation.plan import build_plan

    return run_inprocess(build_plan(spec, folder, force=True))


def run_inprocess(
    plan: RunPlan, progress: Progress | None = None, grid_class: type[InProcessGrid] | None = None
) -> RunSummary:
    """Run the plan with the in-process grid (no Ray, no SuperLink); ``grid_class`` replaces it
    (``benchmarks/security/robustness.py`` plays hostile sites with one)."""
    _set_task_identity()
    run_config = {
        "plan": str(Path(plan.output_dir) / "plan.json"),
        "site-configs": str(plan.site_configs or ""),
    }
    n = plan.expected_sites if plan.site_configs else 0
    contexts = {
        1000 + i: Context(
            run_id=1,
            node_id=1000 + i,
            node_config={"partition-id": i, "num-partitions": n},
            state=RecordDict(),
            run_config=run_config,
        )
        for i in range(n)
    }
    grid = (grid_class or InProcessGrid)(contexts) if n else None
    try:
        return FederatedRun(plan, grid, progress, controls=run_control).run()
    finally:
        if grid is not None:
            grid.close()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MmflError(f"flower-superlink exited with status {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise MmflError(f"flower-superlink did not listen on port {port} within {timeout:.0f} s")


def _tail(path: Path, offset: int, progress: Progress | None) -> int:
    if not path.exists():
        return offset
    with path.open("r", encoding="utf-8") as fh:
        fh.seek(offset)
        while True:
            line = fh.readline()
            if not line or not line.endswith("\n"):
                return offset
            offset += len(line.encode("utf-8"))
            if progress and line.strip():
                progress(json.loads(line))


def run_flower(
    plan: RunPlan, progress: Progress | None = None, timeout: float = 3600.0, ray_address: str | None = None
) -> RunSummary:
    """Run the plan on Flower's simulation engine; returns the summary the ServerApp wrote.

    ``ray_address``: an existing Ray cluster's head (``HOST:PORT``). Flower's engine calls
    ``ray.init()`` without an address, which joins the cluster named by ``RAY_ADDRESS``; without
    it, Ray starts on this machine alone."""
    out = Path(plan.output_dir)
    flwr_home = out / "flower"
    flwr_home.mkdir(parents=True, exist_ok=True)
    extra = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    if ray_address:
        extra["RAY_ADDRESS"] = ray_address
    env = flower_env(flwr_home, extra)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "mmfl-sim"\n\n[superlink.mmfl-sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    app_dir = out / "flower" / "app"
    shutil.copytree(str(files("mmfl") / "flower_app"), app_dir, dirs_exist_ok=True)
    log_path = out / "flower" / "superlink.log"
    superlink = subprocess.Popen(
        [
            flower_bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(flwr_home / "superlink.db"),
        ],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_port(port, superlink, 60)
        n = plan.expected_sites if plan.site_configs else 0
        run_config = f"plan='{Path(plan.output_dir) / 'plan.json'}' site-configs='{plan.site_configs or ''}'"
        federation = f"num-supernodes={max(n, 1)} client-resources-num-cpus=1"
        submit = subprocess.run(
            [
                flower_bin("flwr"),
                "run",
                str(app_dir),
                "mmfl-sim",
                "--run-config",
                run_config,
                "--federation-config",
                federation,
                "--format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if submit.returncode != 0:
            raise MmflError(f"flwr run failed: {(submit.stdout + submit.stderr).strip().splitlines()[-1:]}")
        run_id = json.loads(submit.stdout)["run-id"]
        offset, deadline = 0, time.monotonic() + timeout
        status, next_status = "", 0.0
        while time.monotonic() < deadline:
            offset = _tail(out / "rounds.jsonl", offset, progress)
            # Each status query is a fresh `flwr` process (a second of CPU): asked every second
            # it took half of a 2-core machine from the run. Ask rarely until the summary exists.
            if time.monotonic() >= next_status or (out / "summary.json").exists():
                status = _run_status(env, run_id)
                if status.startswith("finished"):
                    break
                next_status = time.monotonic() + STATUS_EVERY_SECONDS
            time.sleep(1.0)
        offset = _tail(out / "rounds.jsonl", offset, progress)
        if not status.startswith("finished:completed"):
            logs = _run_logs(env, run_id)
            raise MmflError(f"Flower run {run_id} ended as {status or 'timeout'}: {logs}")
    finally:
        _stop(superlink)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise MmflError(f"the run finished without writing {summary_path}")
    return RunSummary.read(summary_path)


def _run_status(env: dict[str, str], run_id: int) -> str:
    ls = subprocess.run(
        [flower_bin("flwr"), "ls", "mmfl-sim", "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ls.returncode != 0:
        return ""
    runs = json.loads(ls.stdout).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def _run_logs(env: dict[str, str], run_id: int) -> str:
    logs = subprocess.run(
        [flower_bin("flwr"), "log", str(run_id), "mmfl-sim", "--show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [ln for ln in (logs.stdout + logs.stderr).splitlines() if "Error" in ln or "error" in ln]
    return " | ".join(lines[-3:]) or "no error in the run log"


def _stop(proc: subprocess.Popen) -> None:
    """Stop the SuperLink and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
