"""Experiment tracking: a simulation's rounds, config and model card in TensorBoard and MLflow.

One tracked run per simulated run (strategy and seed), named ``<strategy>-seed<seed>``; runs of
one command share a tracking folder (``RUN/tracking`` for ``mmfl simulate`` and its controls,
``OUT/tracking`` for ``mmfl simulate compare``), so they appear side by side:

* ``tensorboard/<run name>/``: TensorBoard event files (scalars per round, the spec as hparams
  and as text, the model card as text);
* ``mlflow.db``: an MLflow SQLite tracking store (experiment = the spec's name; metrics per
  round, the spec as params, ``spec.toml``, ``summary.json`` and ``model_card.json`` as
  artifacts under ``mlflow-artifacts/``). SQLite, because MLflow 3 refuses its file store.

Metrics are the values of ``summary.json``'s rounds (step = round number), flattened into
names by :func:`round_metrics` and :func:`final_metrics`. They are logged as each round ends
(the round loop's ``round`` event carries the same record ``summary.json`` is built from), and
checked against ``summary.json`` when the run ends: any value that differs or is missing is
logged from the summary then.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from mmfl.config import FederationSpec, dump_toml
from mmfl.errors import MmflError
from mmfl.protocols.summary import SUMMARY_FILE, FinalMetrics, RoundSummary, RunSummary
from mmfl.server.records import RoundRecord

BACKENDS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlflow-artifacts"

Event = Mapping[str, Any]


def parse_backends(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--tracking`` values (repeatable, each comma-separated) as backends in first-seen order;
    ``none`` or nothing gives ``()``. An unknown value raises :class:`MmflError` naming it."""
    names = [v.strip().lower() for value in values or () for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in (*BACKENDS, "none")]
    if unknown:
        raise MmflError(f"unknown --tracking value {unknown[0]!r} (choose tensorboard, mlflow or none)")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def run_name(strategy: str, seed: int) -> str:
    """The tracked run's name: one per strategy and seed."""
    return f"{strategy}-seed{seed}"


def metric_name(*parts: object) -> str:
    """``a/b/c`` from the parts; characters MLflow refuses in a name become ``_``."""
    return re.sub(r"[^\w\-. /]", "_", "/".join(str(p) for p in parts))


def _numbers(prefix: Sequence[object], value: Any) -> Iterable[tuple[str, float]]:  # noqa: ANN401
    """The finite numeric leaves of a nested mapping, named by their path below ``prefix``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers([*prefix, key], item)
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        yield metric_name(*prefix), float(value)


def round_metrics(row: RoundSummary) -> dict[str, float]:
    """One round of ``summary.json`` as ``name -> value``: ``server/{train_loss,distill_loss}``,
    ``server/{val,test}/<key>`` for every retrieval key (R@k, mAP, rsum, per modality pair),
    ``bytes/{down,up}``, ``sites/{accepted,dropped}``, ``epsilon/<site>`` (DP sites),
    ``site/<site>/<metric>``, ``weight_entropy/<modality>``, ``time/wall_seconds`` and
    ``time/<phase>``. Missing, null and non-finite values are left out."""
    accepted = sum(1 for s in row.sites if s.accepted)
    out = dict(_numbers(["server"], row.server_metrics.model_dump(exclude_none=True)))
    out[metric_name("bytes", "down")] = float(row.bytes_down)
    out[metric_name("bytes", "up")] = float(row.bytes_up)
    out[metric_name("sites", "accepted")] = float(accepted)
    out[metric_name("sites", "dropped")] = float(len(row.sites) - accepted)
    for site in row.sites:
        out.update(_numbers(["epsilon", site.site_id], site.epsilon))
        out.update(_numbers(["site", site.site_id], site.metrics))
    out.update(_numbers(["weight_entropy"], row.weight_entropy))
    out.update(_numbers(["time", "wall_seconds"], row.wall_seconds))
    out.update(_numbers(["time"], row.phase_seconds))
    return out


def round_of_event(event: Event) -> RoundSummary:
    """The round loop's ``round`` event (a :class:`~mmfl.server.records.RoundRecord` as JSON) as
    ``summary.json`` will carry it."""
    return RoundRecord.model_validate({k: event[k] for k in RoundRecord.model_fields if k in event}).summary_row()


def final_metrics(final: FinalMetrics) -> dict[str, float]:
    """``summary.json``'s ``final`` block: ``final/test/<key>``, ``final/val/<key>`` and
    ``final/site/<site>/<metric>``."""
    out = dict(_numbers(["final", "test"], final.retrieval or {}))
    out.update(_numbers(["final", "val"], final.val_retrieval or {}))
    out.update(_numbers(["final", "site"], final.site_metrics))
    return out


def spec_params(spec: FederationSpec) -> dict[str, str | int | float | bool]:
    """The spec flattened to ``a.b.c -> value`` (list items by index, lists of plain values
    as JSON); unset (None) keys are left out."""
    out: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value: Any) -> None:  # noqa: ANN401
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif isinstance(value, list):
            out[prefix] = json.dumps(value)
        elif value is not None:
            out[prefix] = value

    walk("", spec.model_dump(mode="json"))
    return out


def model_card(run_dir: Path, strategy: str) -> dict[str, Any] | None:
    """The run's model card: ``export/model_card.json`` if ``mmfl export`` wrote one, else the
    card ``mmfl export`` would write, built from the run folder; None when the method ends
    without a server model (``local``)."""
    from mmfl.inference.card import CARD_FILE
    from mmfl.inference.trained import load
    from mmfl.strategies.methods import method_of

    exported = run_dir / "export" / CARD_FILE
    if exported.is_file():
        return json.loads(exported.read_text(encoding="utf-8"))
    if not method_of(strategy).has_server_model:
        return None
    return load(run_dir).card.model_dump(mode="json")


class Sink(Protocol):
    """One backend's view of one run."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self, summary_path: Path, card: dict[str, Any] | None) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoardSink:
    """Event files in ``root/tensorboard/<run name>/`` (an older log of that run is replaced)."""

    def __init__(self, root: Path, name: str, spec: FederationSpec, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        log_dir = root / TENSORBOARD_DIR / name
        if log_dir.exists():
            shutil.rmtree(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir))
        headline = [metric_name("server", split, "rsum") for split in ("val", "test")]
        self._hparams = hparams(dict(params), dict.fromkeys(headline, 0.0))  # only the names are read
        self.writer.file_writer.add_summary(self._hparams[0])  # experiment: the hparams' names
        self.writer.file_writer.add_summary(self._hparams[1])  # this session's values
        self.writer.add_text("config/spec.toml", f"```toml\n{dump_toml(spec)}\n```")
        self.writer.flush()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def finish(self, summary_path: Path, card: dict[str, Any] | None) -> None:
        if card is not None:
            self.writer.add_text("model_card", f"```json\n{json.dumps(card, indent=2)}\n```")
        self.writer.file_writer.add_summary(self._hparams[2])  # the session ended well

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowSink:
    """A run in the SQLite store ``root/mlflow.db``, in the experiment named after the spec (an
    older run of the same name and output folder is deleted)."""

    def __init__(
        self,
        root: Path,
        name: str,
        spec: FederationSpec,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
        for quiet in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(quiet).setLevel(logging.WARNING)  # creating the store's tables
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=mlflow_uri(root))
        experiment = self.client.get_experiment_by_name(spec.name)
        if experiment is None:
            experiment_id = self.client.create_experiment(
                spec.name, artifact_location=(root / MLFLOW_ARTIFACTS).resolve().as_uri()
            )
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment_id)
            for old in self.client.search_runs([experiment_id], f"attributes.run_name = '{name}'"):
                if old.data.tags.get("mmfl.output_dir") == tags["mmfl.output_dir"]:
                    self.client.delete_run(old.info.run_id)
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_text(self.run_id, dump_toml(spec), "spec.toml")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary_path: Path, card: dict[str, Any] | None) -> None:
        self.client.log_artifact(self.run_id, str(summary_path))
        if card is not None:
            self.client.log_dict(self.run_id, card, "model_card.json")

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def mlflow_uri(root: Path) -> str:
    """The tracking URI of the MLflow store in a tracking folder."""
    return f"sqlite:///{(root / MLFLOW_DB).resolve()}"


def view_commands(backends: Sequence[str], root: Path) -> list[str]:
    """The commands that open a tracking folder."""
    commands = {
        "tensorboard": f"tensorboard --logdir {(root / TENSORBOARD_DIR).resolve()}",
        "mlflow": f"mlflow ui --backend-store-uri {mlflow_uri(root)}",
    }
    return [commands[b] for b in backends]


class RunTracker:
    """Logs one simulated run to ``backends`` in the tracking folder ``root``.

    Use as a context manager around the run: pass :meth:`watch` (or call the tracker) with each
    progress event, then :meth:`finish` with the run's summary. Leaving the block without
    :meth:`finish` (an error) marks the MLflow run as failed. With no backends it does nothing.
    """

    def __init__(
        self, backends: Sequence[str], root: Path, spec: FederationSpec, run_id: str, run_dir: Path
    ) -> None:
        self.run_dir = run_dir
        self.sinks: list[Sink] = []
        self._logged: dict[int, dict[str, float]] = {}
        self._finished = False
        if not backends:
            return
        name = run_name(spec.strategy, spec.seed)
        params = spec_params(spec)
        tags = {
            "mmfl.run_id": run_id,
            "mmfl.strategy": spec.strategy,
            "mmfl.seed": str(spec.seed),
            "mmfl.dataset": spec.dataset,
            "mmfl.output_dir": str(run_dir.resolve()),
        }
        for backend in parse_backends(backends):
            if backend == "tensorboard":
                self.sinks.append(TensorBoardSink(root, name, spec, params))
            else:
                self.sinks.append(MlflowSink(root, name, spec, params, tags))

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sink in self.sinks:
            sink.close(failed=kind is not None or not self._finished)

    def _log(self, metrics: Mapping[str, float], step: int) -> None:
        if metrics:
            for sink in self.sinks:
                sink.log(metrics, step)
            self._logged.setdefault(step, {}).update(metrics)

    def __call__(self, event: Event) -> None:
        """A progress event: a finished round (``event == "round"``) is logged at once."""
        if self.sinks and event.get("event") == "round":
            self._log(round_metrics(round_of_event(event)), int(event["round"]))

    def watch(self, progress: Callable[[Event], None]) -> Callable[[Event], None]:
        """``progress``, then this tracker, for each event."""
        if not self.sinks:
            return progress

        def both(event: Event) -> None:
            progress(event)
            self(event)

        return both

    def finish(self, summary: RunSummary) -> None:
        """Make the logged rounds equal ``summary``'s (log what differs or is missing), log the
        final metrics at the last round, and the summary and model card as artifacts."""
        if not self.sinks:
            return
        for row in summary.rounds:
            logged = self._logged.get(row.round, {})
            self._log({k: v for k, v in round_metrics(row).items() if logged.get(k) != v}, row.round)
        last = summary.rounds[-1].round if summary.rounds else 0
        self._log(final_metrics(summary.final), last)
        card = model_card(self.run_dir, summary.strategy)
        for sink in self.sinks:
            sink.finish(self.run_dir / SUMMARY_FILE, card)
        self._finished = True
