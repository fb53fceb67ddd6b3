"""The coordinator's run: set up, discover the sites, run the rounds, resume, write results.

Everything a method changes is read from its :class:`~mmfl.strategies.methods.Method`; the
round itself is :class:`~mmfl.server.rounds.RoundPipeline`. After each round the run
checkpoints (model, optimizer, random states, records), records the round in the run store and
appends it to ``rounds.jsonl``; at the end it builds the site-free controls and chooses what to
deliver (:mod:`mmfl.server.delivery`), then writes ``final_model.pt`` (the delivered model),
``evidence.json``, the store's final status and, last, ``summary.json`` (the mark that the run
is done).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from mmfl.config import RunPlan, SiteSpec
from mmfl.data.prepared import PreparedDataset
from mmfl.files import atomic_write_bytes, atomic_write_text
from mmfl.models.multimodal import MultiEncoder
from mmfl.protocols.delivery import Candidate, Delivery
from mmfl.protocols.messages import CapabilitiesQuery, ReleaseInstruction
from mmfl.protocols.summary import SUMMARY_FILE, FinalMetrics, RunSummary
from mmfl.server.checkpoint import load_checkpoint, save_checkpoint
from mmfl.server.data import load_server_data
from mmfl.server.delivery import ControlRunner, candidate, control_spec, control_strategies, run_in_child
from mmfl.server.exchange import SiteExchange
from mmfl.server.groups import GroupModels
from mmfl.server.model import ServerTrainer
from mmfl.server.records import RoundRecord
from mmfl.server.release import EnsembleResult, build_ensemble, reference_shapes
from mmfl.server.rounds import RoundPipeline
from mmfl.server.sites import SiteRegistry, SiteSampler, discover
from mmfl.server.store import RunStore, open_store
from mmfl.server.summary import build_evidence, build_summary, to_json
from mmfl.strategies.choice import SiteShape, choose_method, public_pairs
from mmfl.strategies.methods import method_of

FEDERATION_MODEL = "federation_model.pt"
"""The federation's own model, kept beside ``final_model.pt`` when a control was delivered."""


class FederatedRun:
    """One run of a plan on a grid (``grid`` may be None for methods that use no site).
    ``controls`` runs the site-free controls of the delivery (default: in a child process)."""

    def __init__(
        self,
        plan: RunPlan,
        grid: Grid | None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        controls: ControlRunner | None = None,
    ) -> None:
        self.plan = plan
        self.controls = controls or run_in_child
        self.spec = plan.spec
        self.choice = plan.method_choice
        # "auto" in a deployment is resolved once the sites have declared their shape
        # (_choose_method); until then the provisional method contacts every site.
        self.method = method_of("cream+" if self.spec.strategy == "auto" else self.spec.strategy)
        self.cream = self.method.cream(self.spec.cream)
        self.grid = grid
        self.out = Path(plan.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress_path = self.out / "rounds.jsonl"
        self._progress_cb = progress
        self.dataset = PreparedDataset(Path(plan.dataset_root))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.store = RunStore(open_store(plan.store_url), plan.run_id)
        self.rng = np.random.default_rng([self.spec.seed, 17])
        self.sampler = SiteSampler(self.cream.sites_per_round, self.spec.seed)
        self.public_fingerprint = self.dataset.public_set(self.spec.public_pool).fingerprint()
        self.registry = SiteRegistry(
            self.spec.modalities, self.public_fingerprint, self._event, plan.site_names, plan.site_keys
        )
        self.records: list[RoundRecord] = []
        self.ensemble: EnsembleResult | None = None

    # -- progress and events ---------------------------------------------------------------------
    def _event(self, kind: str, message: str) -> None:
        log(WARNING if kind.endswith(("error", "refused", "failed")) else INFO, "%s: %s", kind, message)
        self.store.event(kind, message)
        self._emit({"event": kind, "message": message})

    def _emit(self, record: dict[str, Any]) -> None:
        record = {**record, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        with self.progress_path.open("a", encoding="utf-8") as fh:
            fh.write(to_json(record, indent=None) + "\n")
        if self._progress_cb:
            self._progress_cb(record)

    # -- set-up ------------------------------------------------------------------------------------
    def _discover(self) -> None:
        """Wait for the expected sites and register the compatible ones."""
        if self.grid is None:
            raise ValueError(f"method {self.method.name} needs sites")
        query = CapabilitiesQuery(run_id=self.plan.run_id, public_fingerprint=self.public_fingerprint)
        discover(
            self.grid,
            self.registry,
            query,
            self.plan.expected_sites,
            self.plan.discovery_timeout,
            self.spec.server.round_timeout,
        )
        if self.spec.strategy == "auto":
            self._choose_method()
        if self.method.site_work == "weights":
            common = self.method.server_architectures(self.spec)
            self.registry.refuse_unless(
                lambda c: (
                    None
                    if c.architectures == common
                    else f"architectures {c.architectures} differ from {common}"
                )
            )
        if self.method.transfer == "regress" and self.spec.regress.sites == "paired":
            wanted = set(self.spec.modalities)
            self.registry.refuse_unless(
                lambda c: (
                    None
                    if wanted <= set(c.modalities)
                    else f"holds {', '.join(c.modalities)} only; regress.sites = paired takes sites "
                    "that hold every modality"
                )
            )
        acks = self.plan.privacy_acks
        self.registry.refuse_rolled_back(
            lambda identity: self.store.highest_epsilon(identity, acks.get(identity)),
            lambda identity: self.store.lowest_budget(identity, acks.get(identity)),
        )
        for node, caps in self.registry.sites.items():
            self.store.add_site(caps.site_id, {**caps.model_dump(), "identity": self.registry.identity(node)})
        log(
            INFO,
            "registered %d sites: %s",
            len(self.registry.sites),
            [c.site_id for c in self.registry.sites.values()],
        )

    def _pipeline(self) -> RoundPipeline:
        architectures = self.method.server_architectures(self.spec)
        pool = self.plan.site_configs if self.method.server_data == "public+sites" else None
        if self.method.server_data == "public+sites" and pool is None:
            raise ValueError(
                f"the {self.method.name} baseline needs the sites' configurations (simulation only)"
            )
        data = load_server_data(self.dataset, architectures, self.spec.modalities, pool, self.spec.public_pool)
        model = MultiEncoder(
            {m: a for m, a in architectures.items() if m in self.spec.modalities},
            data.shapes,
            self.spec.embed_dim,
            len(self.dataset.info.classes),
            seed=self.spec.seed,
        )
        by_class = self.dataset.info.pairing == "class"
        trainer = ServerTrainer(model, self.spec.server, self.cream, by_class, self.device)
        exchange = None
        if self.method.uses_sites:
            assert self.grid is not None
            exchange = SiteExchange(
                self.grid,
                self.registry,
                self.spec.server.round_timeout,
                {"cuda": dict(self.spec.server.gpu_work)} if self.spec.server.gpu_work else None,
                on_progress=lambda r, done, total: self._emit(
                    {"event": "sites", "round": r, "done": done, "total": total}
                ),
                unit_norm_tolerance=self.cream.unit_norm_tolerance,
            )
        return RoundPipeline(
            self.plan.run_id,
            self.spec,
            self.method,
            self.cream,
            trainer,
            data,
            self.public_fingerprint,
            self.rng,
            self.sampler,
            exchange,
            self._event,
            GroupModels(
                self.dataset,
                self.spec.embed_dim,
                self.spec.regress.group_momentum,
                self.spec.seed,
                self.spec.public_pool,
            )
            if self.method.transfer == "regress" and self.method.uses_sites
            else None,
        )

    # -- the run ---------------------------------------------------------------------------------
    def _choose_method(self) -> None:
        """Resolve ``strategy = "auto"`` from what the registered sites declared
        (:func:`~mmfl.strategies.choice.choose_method`); they become the spec's sites."""
        declared = list(self.registry.sites.values())
        shapes = [
            SiteShape(modalities=list(c.modalities), architectures=dict(c.architectures)) for c in declared
        ]
        pairs = public_pairs(self.dataset.public_set(self.spec.public_pool).samples, self.spec.modalities)
        self.choice = choose_method(self.spec.modalities, shapes, pairs)
        sites = [
            SiteSpec(id=c.site_id, modalities=list(c.modalities), architectures=dict(c.architectures))
            for c in declared
        ]
        self.spec = self.spec.model_copy(update={"strategy": self.choice.chosen, "sites": sites})
        self.method = method_of(self.choice.chosen)
        self.cream = self.method.cream(self.spec.cream)
        self.sampler = SiteSampler(self.cream.sites_per_round, self.spec.seed)
        self.store.start(
            self.spec.name, self.spec.strategy, self.spec.dataset, self.spec.seed,
            self.spec.model_dump(mode="json"), str(self.out),
        )  # fmt: skip
        self._event("method", self.choice.line)

    def run(self) -> RunSummary:
        started = time.perf_counter()
        if self.plan.threads:
            torch.set_num_threads(self.plan.threads)
        if not self.plan.resume:
            self.progress_path.write_text("")
        self.store.start(
            self.spec.name,
            self.spec.strategy,
            self.spec.dataset,
            self.spec.seed,
            self.spec.model_dump(mode="json"),
            str(self.out),
        )
        try:
            return self._rounds_and_delivery(started)
        except BaseException as exc:
            # A run that stops on an error (or is interrupted) says so in the store, the console
            # and `mmfl runs`, instead of showing "running" for ever; resuming it starts it again.
            status = "failed" if isinstance(exc, Exception) else "interrupted"
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._event(status, error)
            self.store.finish(status, {"error": error})
            raise

    def _rounds_and_delivery(self, started: float) -> RunSummary:
        if self.choice is not None:  # chosen when the plan was built (a simulation)
            self._event("method", self.choice.line)
        if self.method.uses_sites:
            self._discover()  # first: in a deployment, "auto" is resolved from the sites' shape
        pipeline = self._pipeline()
        first = self._resume(pipeline) + 1 if self.plan.resume else 1
        self._emit(
            {
                "event": "start",
                "rounds": self.spec.rounds,
                "first_round": first,
                "sites": [c.site_id for c in self.registry.sites.values()],
            }
        )
        for r in range(first, self.spec.rounds + 1):
            self._emit({"event": "round-start", "round": r})
            record = pipeline.run(r)
            self.records.append(record)
            self._checkpoint(pipeline, record)
        site_metrics = {}
        if self.grid is not None and self.registry.sites:
            site_metrics = pipeline.evaluate_sites(self.registry.online(self.grid))
        final = FinalMetrics.model_validate({**pipeline.final(), "site_metrics": site_metrics})
        self.ensemble = self._release(pipeline)
        wall = time.perf_counter() - started
        sites = list(self.registry.sites.values())
        summary = build_summary(
            self.plan.run_id,
            self.spec,
            self.dataset.info,
            self.public_fingerprint,
            sites,
            self.records,
            final,
            wall,
            self.choice,
        )
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in pipeline.trainer.model.state_dict().items()}, buffer)
        delivery, model_bytes = self._deliver(summary, buffer.getvalue())
        summary.delivery = delivery
        if delivery.source != "federation":  # the federation's own model stays beside it
            atomic_write_bytes(self.out / FEDERATION_MODEL, buffer.getvalue())
        atomic_write_bytes(self.out / "final_model.pt", model_bytes)
        evidence = build_evidence(summary, sites, self.records, model_bytes)
        atomic_write_text(self.out / "evidence.json", to_json(evidence))
        failed = sum(1 for rec in self.records if rec.status != "completed")
        final_json = final.model_dump(mode="json")
        self.store.finish("completed" if not failed else "completed-with-failed-rounds", final_json)
        # summary.json last: whoever sees it (CLI, console, tests) may rely on the model, the
        # evidence and the store's final status being there already.
        atomic_write_text(self.out / SUMMARY_FILE, summary.to_json())
        self._emit({"event": "finish", "wall_seconds": wall, "final": final_json})
        return summary

    # -- delivery ----------------------------------------------------------------------------------
    def _release(self, pipeline: RoundPipeline) -> EnsembleResult | None:
        """The consenting sites' final models, once, and their ensemble (:mod:`mmfl.server.release`)."""
        if self.grid is None or pipeline.exchange is None or self.method.site_work != "represent":
            return None
        if self.method.site_data != "private":
            return None  # a control's sites hold the public set: nothing of theirs is a deliverable
        nodes = [n for n in self.registry.online(self.grid) if self.registry.sites[n].releases_final_model]
        if not nodes:
            return None
        reports, released = pipeline.exchange.release(
            nodes,
            ReleaseInstruction(run_id=self.plan.run_id, round=self.spec.rounds),
            lambda caps: reference_shapes(caps, self.dataset, self.spec.embed_dim),
        )
        for report in reports:
            if not report.accepted:
                self._event("release-refused", f"site {report.site_id}: {report.reason}")
        ensemble = build_ensemble(
            [released[n] for n in sorted(released)],
            self.dataset,
            self.spec.modalities,
            self.spec.embed_dim,
            pipeline.pairs,
            self.spec.server.eval_batch_size,
        )
        if ensemble is not None:
            self._event(
                "ensemble",
                f"the sites' ensemble of {', '.join(ensemble.sites)} (chosen on val among "
                f"{len(ensemble.val_by_k)} released paired models): val rsum {ensemble.val.get('rsum', 0.0):.1f}",
            )
        return ensemble

    def _deliver(self, summary: RunSummary, federation_model: bytes) -> tuple[Delivery, bytes]:
        """Build the site-free controls (a finished one is reused on resume), choose on val, and
        return the choice with the delivered model's bytes (:mod:`mmfl.server.delivery`)."""
        federation = candidate(summary, "federation", ".")
        ensemble = None
        if self.ensemble is not None:
            ensemble = Candidate(
                strategy="ensemble",
                source="ensemble",
                val_rsum=self.ensemble.val.get("rsum"),
                test_rsum=self.ensemble.test.get("rsum"),
                folder=".",
            )
        names = control_strategies(self.method, self.spec.delivery)
        record = self.ensemble.record() if self.ensemble is not None else None
        if not names or not self.spec.delivery.select:
            why = (
                "selection is off (delivery.select = false), nothing was compared"
                if names
                else "it is a site-free run itself, or has no server model"
            )
            only = Delivery.only(federation, why)
            if ensemble is not None:  # recorded for comparisons run elsewhere (benchmarks)
                only = only.model_copy(update={"candidates": [federation, ensemble], "ensemble": record})
            return only, federation_model
        registered = None if self.plan.site_configs else list(self.registry.sites.values())
        found: list[Candidate] = []
        models: dict[str, Path] = {}
        for name in names:
            folder = self.out / "controls" / name.replace("+", "plus")
            self._emit({"event": "control-start", "strategy": name})
            try:
                done = folder / SUMMARY_FILE
                if done.exists() and (folder / "final_model.pt").exists():
                    control = RunSummary.read(done)
                else:
                    control = self.controls(control_spec(self.spec, self.method, name, registered), folder)
            except Exception as exc:  # noqa: BLE001 - a failed control never costs the run
                self._event("control-failed", f"{name}: {exc}")
                continue
            found.append(candidate(control, "control", str(folder.relative_to(self.out))))
            models[name] = folder / "final_model.pt"
            self._emit({"event": "control-done", **found[-1].model_dump()})
        delivery = Delivery.choose(federation, found, ensemble)
        if record is not None:
            delivery = delivery.model_copy(update={"ensemble": record})
        self._event("delivered", delivery.line)
        if delivery.source == "federation":
            return delivery, federation_model
        if delivery.source == "ensemble":
            assert self.ensemble is not None
            return delivery, self.ensemble.state_bytes()
        return delivery, models[delivery.delivered].read_bytes()

    def _checkpoint(self, pipeline: RoundPipeline, record: RoundRecord) -> None:
        """Checkpoint, then record the round (a crash in between is healed by :meth:`_resume`)."""
        path, digest = save_checkpoint(
            self.out / "checkpoints",
            record.round,
            {
                "trainer": pipeline.trainer.state_dict(),
                **({"groups": pipeline.group_models.state_dict()} if pipeline.group_models else {}),
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.random.get_rng_state(),
                "sampler_rng": self.sampler.rng.getstate(),
                "records": [r.model_dump() for r in self.records],
            },
            self.plan.keep_checkpoints,
        )
        self.store.add_checkpoint(record.round, str(path), digest)
        self.store.add_round(record)
        self._emit(
            {
                "event": "round",
                **record.model_dump(),
                "bytes_down": record.bytes_down,
                "bytes_up": record.bytes_up,
            }
        )

    def _resume(self, pipeline: RoundPipeline) -> int:
        """Continue after the newest checkpoint: model, optimizer, random states, the rounds so
        far (re-recorded in the store if the crash came between checkpoint and record). Returns
        the last completed round (0 when there is no checkpoint)."""
        checkpoints = sorted((self.out / "checkpoints").glob("round-*.pt"))
        if not checkpoints:
            self._event("resume", "no checkpoint to resume from; starting at round 1")
            return 0
        newest = checkpoints[-1]
        state = load_checkpoint(newest, self.store.checkpoint_digest(int(newest.stem.split("-")[1])))
        pipeline.trainer.load_state_dict(state["trainer"])
        if pipeline.group_models is not None and "groups" in state:
            pipeline.group_models.load_state_dict(state["groups"])
        self.rng.bit_generator.state = state["rng"]
        torch.random.set_rng_state(state["torch_rng"])
        self.sampler.rng.setstate(state["sampler_rng"])
        self.records = [RoundRecord.model_validate(r) for r in state["records"]]
        stored = {row.round for row in self.store.rounds()}
        for rec in self.records:
            if rec.round not in stored:
                self.store.add_round(rec)
        last = int(state["round"])
        self._event("resume", f"resumed after round {last} from {checkpoints[-1].name}")
        return last
