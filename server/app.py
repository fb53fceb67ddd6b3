"""The ServerApp: Flower's entry point on the coordinator, the same in simulation and deployment.

The run configuration names the run plan: ``plan = "/abs/path/plan.json"`` (a
:class:`~mmfl.config.RunPlan`, written by ``mmfl simulate`` or the operator daemon).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mmfl.config import RunPlan
from mmfl.errors import MmflError
from mmfl.flower_runtime import shorten_pull_backoff
from mmfl.server.loop import FederatedRun

app = ServerApp()
shorten_pull_backoff()  # replies are pulled as soon as their arrays are up, not a second later


def load_plan(context: Context) -> RunPlan:
    path = context.run_config.get("plan")
    if not path:
        raise MmflError("the run configuration has no 'plan' (path of a run plan JSON file)")
    return RunPlan.model_validate_json(Path(str(path)).read_text(encoding="utf-8"))


@app.main()
def main(grid: Grid, context: Context) -> None:
    FederatedRun(load_plan(context), grid).run()
