"""The coordinator's site-free controls and the choice of what a run delivers.

After the federation's last round the coordinator builds, from what it holds alone, the
models it could have made without any site (:func:`control_strategies`), each a run of its own
under ``OUT/controls/NAME``, and delivers the better on val (:class:`~mmfl.protocols.delivery.Delivery`).

Controls whose sites hold the public set (``regress-public``, ``public-teachers``) run the
same ClientApp code as real sites, on the coordinator's machine. ``server/`` does not import
the site runtime, so by default a control runs in a child process (``python -m
mmfl.simulation.controls FOLDER``); the simulation engine passes an in-process runner.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from mmfl.config import DeliveryConfig, FederationSpec, SiteSpec
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text
from mmfl.protocols.delivery import Candidate
from mmfl.protocols.messages import Capabilities
from mmfl.protocols.summary import RunSummary
from mmfl.strategies.methods import Method

ControlRunner = Callable[[FederationSpec, Path], RunSummary]
"""Runs a control's spec with its output in the given folder; returns its summary."""

CONTROL_FILE = "control.json"


def control_strategies(method: Method, configured: DeliveryConfig) -> list[str]:
    """The site-free runs a method's delivery is compared with (none for a method without a
    server model or for a control itself): ``delivery.controls``, or server-only and the
    method's offline control (``site-free`` for the ensembles, ``regress-public`` for regress;
    weight averaging has server-only alone)."""
    if not (method.uses_sites and method.has_server_model) or method.control_of is not None:
        return []
    if configured.controls is not None:
        return list(configured.controls)
    if method.site_work == "weights":
        return ["server-only"]
    return ["server-only", "regress-public" if method.transfer == "regress" else "site-free"]


def control_spec(
    spec: FederationSpec, method: Method, strategy: str, registered: Sequence[Capabilities] | None
) -> FederationSpec:
    """The federation's spec for a control: the same data, seed, rounds, server architectures
    and settings, no selection of its own; its sites (for the public-set controls) are the
    federation's sites as declared (``registered``: what deployed sites told the coordinator)."""
    sites = spec.sites
    if registered is not None:
        sites = [
            SiteSpec(id=c.site_id, modalities=list(c.modalities), architectures=dict(c.architectures))
            for c in registered
        ]
    server = spec.server.model_copy(update={"architectures": method.server_architectures(spec)})
    return spec.model_copy(
        update={
            "strategy": strategy,
            "sites": sites,
            "server": server,
            "delivery": DeliveryConfig(select=False),
        }
    )


def candidate(summary: RunSummary, source: Literal["federation", "control"], folder: str) -> Candidate:
    """A run's summary as a delivery candidate."""
    return Candidate(
        strategy=summary.strategy,
        source=source,
        val_rsum=summary.final.val_rsum,
        test_rsum=summary.final.test_rsum,
        folder=folder,
    )


def run_in_child(spec: FederationSpec, folder: Path) -> RunSummary:
    """Run a control in a child process with the simulation engine (see the module)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CONTROL_FILE, spec.model_dump_json(indent=2))
    done = subprocess.run(
        [sys.executable, "-m", "mmfl.simulation.controls", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MmflError(f"the {spec.strategy} control failed: {last}")
    return RunSummary.read(folder)
