"""Every name mmfl takes from Flower's internal modules, in one place (a module's name with
``None`` is the module itself).

mmfl uses Flower's public API (``flwr.app``, ``flwr.clientapp``, ``flwr.serverapp``) for
everything a user's code would; a few parts reach further (a warm ClientApp launcher, the
retry back-off of object pulls, the in-process engine's task identity, the SuperNode's entry
point, FedAvg's array aggregation). Those names are resolved here, lazily, so that:

* a Flower upgrade breaks in one file, and ``tests/test_flower_internals.py`` says which name
  moved (it imports every one under the pinned version);
* importing mmfl does not import them before they are used.

Written for the Flower pinned in ``pyproject.toml`` (:data:`FLOWER_SERIES`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

FLOWER_SERIES = "1.42"
"""The Flower release series these names were read from (``flwr[simulation]==1.42.*``)."""

INTERNALS: dict[str, tuple[str, str | None]] = {
    # warm ClientApp launcher (client/warm_launcher.py)
    "AcquireTaskRequest": ("flwr.proto.runtime_pb2", "AcquireTaskRequest"),
    "TaskType": ("flwr.supercore.constant", "TaskType"),
    "RuntimeVersionHttpInterceptor": ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor"),
    "SuperExecAuthHttpInterceptor": ("flwr.supercore.interceptors", "SuperExecAuthHttpInterceptor"),
    "make_simple_http_retry_invoker": ("flwr.supercore.retry", "make_simple_http_retry_invoker"),
    "RuntimeHttpClient": ("flwr.supercore.runtime", "RuntimeHttpClient"),
    "ExecutionSpec": ("flwr.supercore.superexec.executor", "ExecutionSpec"),
    "LaunchResult": ("flwr.supercore.superexec.executor", "LaunchResult"),
    "AutoExecPlugin": ("flwr.supercore.superexec.plugin", "AutoExecPlugin"),
    "run_clientapp": ("flwr.supernode.runtime.run_clientapp", "run_clientapp"),
    # object pulls' back-off (mmfl/flower_runtime.py)
    "inflatable_utils": ("flwr.supercore.inflatable", "inflatable_utils"),
    # the in-process engine's task identity (simulation/engines.py)
    "TaskIdentity": ("flwr.supercore.task_identity", "TaskIdentity"),
    # the SuperNode's entry point, and the module whose idle sleep is capped (client/supernode.py)
    "flower_supernode": ("flwr.supernode.cli", "flower_supernode"),
    "start_client_internal": ("flwr.supernode.start_client_internal", None),
    # FedAvg's weighted average of array records (strategies/fedavg.py)
    "aggregate_arrayrecords": ("flwr.serverapp.strategy.strategy_utils", "aggregate_arrayrecords"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = INTERNALS[name]
    except KeyError:
        raise AttributeError(f"module 'mmfl.flower_internals' has no attribute {name!r}") from None
    value = import_module(module) if attribute is None else getattr(import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value
