"""A warm ClientApp launcher for a site's SuperNode (``flower-supernode --isolation process``).

Flower's own SuperExec starts a fresh ``flwr-clientapp`` process for every message, which
imports torch, Flower and mmfl each time (seconds per message, most of a deployed round on a
small site). This launcher is the same SuperExec loop (acquire a task from the SuperNode's
Runtime API, hand it to an :class:`~flwr.supercore.superexec.executor.types.Executor`) with an
executor that forks a process that already has everything imported. Each message still runs
in a process of its own (one crash or leak cannot touch the next), exactly as Flower's
``run_clientapp`` runs it; only the imports are shared.

With ``--site-config`` the parent also loads the site's data and public set and featurises
them once (what a fresh process did for every message); each fork reads its models, ledger and
audit log from the state folder as before. It does so with one torch thread, so no OpenMP or
intra-op thread pool exists when it forks (a pool does not survive ``fork``); each task gets the
usual number of threads back. A changed manifest needs an agent restart (``mmfl client start``).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

from mmfl.flower_internals import (
    AcquireTaskRequest,
    AutoExecPlugin,
    ExecutionSpec,
    LaunchResult,
    RuntimeHttpClient,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
    TaskType,
    make_simple_http_retry_invoker,
)
from mmfl.processes import running

log = logging.getLogger("mmfl.client.launcher")
POLL_SECONDS = 0.2
"""How often the Runtime API is asked for a task (Flower's SuperExec: 1 s); each ask is an HTTP
request that the SuperNode serves, so faster polling takes CPU from the training."""


def _warm_up(site_config: str | None) -> int:
    """Import what every ClientApp run needs and (with a site config) load the site's data;
    returns the torch thread count the tasks should get back."""
    import opacus.accountants  # noqa: F401 - a DP round's accounting (seconds to import)
    import torch
    import torch._dynamo  # noqa: F401 - imported lazily by the first optimizer (about 1 s)

    from mmfl.client.app import preload
    from mmfl.flower_internals import run_clientapp  # noqa: F401  (imported before forking)
    from mmfl.flower_runtime import shorten_pull_backoff

    shorten_pull_backoff()  # inherited by every fork: arrays still arriving are retried within 0.05 s
    threads = torch.get_num_threads()
    if site_config:
        torch.set_num_threads(1)
        started = time.perf_counter()
        try:
            site = preload(Path(site_config))
        except Exception:  # noqa: BLE001 - each task then loads it and reports the problem itself
            log.exception("could not load the site's data ahead; each task loads it")
        else:
            log.info("site %s loaded in %.1f s", site.spec.id, time.perf_counter() - started)
    return threads


class ForkExecutor:
    """Flower's ``Executor`` protocol: runs each ClientApp task in a fork of this process."""

    def __init__(self, task_threads: int) -> None:
        self.children: set[int] = set()
        self.task_threads = task_threads

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, **_: object) -> None:
        return None

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this launcher runs ClientApps only, not {spec.task_type}")
        certificates = None
        if spec.root_certificates_path is not None:
            with open(spec.root_certificates_path, "rb") as fh:
                certificates = fh.read()
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return LaunchResult.accepted()
        code = 1
        try:  # the child: one task, then exit without running the parent's exit handlers
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            random.seed()  # the parent's state would repeat in every child (DP noise uses os.urandom)
            import torch

            torch.set_num_threads(self.task_threads)
            from mmfl.flower_internals import run_clientapp

            run_clientapp(
                runtime_api_address=spec.runtime_api_address,
                token=spec.token,
                insecure=spec.insecure,
                certificates=certificates,
                parent_pid=os.getppid(),
                runtime_dependency_install=False,
            )
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported, then the child ends
            log.exception("ClientApp task failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reconcile(self) -> None:
        """Reap finished tasks."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _parent_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    return running(pid)


def serve(
    runtime_api_address: str, parent_pid: int | None, auth_secret: bytes | None, site_config: str | None
) -> None:
    """Acquire ClientApp tasks from the SuperNode's Runtime API until the parent is gone.

    ``auth_secret``: the SuperNode's ``--superexec-auth-secret-file`` contents; then only a
    holder of that file (not any local user reaching the loopback port) can acquire tasks."""
    executor = ForkExecutor(_warm_up(site_config))
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if auth_secret:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=auth_secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}
            )
        )
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,  # loopback only: the SuperNode serves its Runtime API on 127.0.0.1
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    try:
        while _parent_alive(parent_pid):
            executor.reconcile()
            try:
                response = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
                )
            except Exception as exc:  # noqa: BLE001 - the SuperNode is starting or restarting
                log.warning("Runtime API at %s not answering (%s); retrying", runtime_api_address, exc)
                time.sleep(1.0)
                continue
            if response.HasField("task") and response.token:
                result = plugin.launch_task(token=response.token, task=response.task)
                if result.message:
                    log.warning("task %d: %s", response.task.task_id, result.message)
                continue  # another may be waiting
            time.sleep(POLL_SECONDS)
    finally:
        client.close()
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--superexec-auth-secret-file", default=None)
    parser.add_argument("--site-config", default=None, help="the site's site.toml: load its data once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    secret = None
    if args.superexec_auth_secret_file:
        with open(args.superexec_auth_secret_file, "rb") as fh:
            secret = fh.read()
    serve(args.runtime_api_address, args.parent_pid, secret, args.site_config)


if __name__ == "__main__":
    main()
