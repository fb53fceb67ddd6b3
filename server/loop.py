"""The coordinator's round loop (design: "one round, as data flows").

Per round r:

1. the server model trains one epoch on its own data;
2. it encodes this round's public rows in eval mode (the global representations);
3. the strategy sends them to the sampled sites (``train.represent``);
4. sites train and reply with their representations (validated; bad replies are dropped);
5. the strategy aggregates them per modality;
6. the server distils toward the aggregate, is evaluated (val and test), checkpoints, and the
   round is recorded (run store, ``rounds.jsonl``). A round with fewer accepted sites than
   ``server.min_sites`` is recorded as failed and its aggregate is not distilled.

Baselines reuse the loop: ``server-only`` and ``centralized`` contact no site (``centralized``
trains on the sites' pooled training rows as well), ``local`` lets sites train alone and skips
the server, ``mean`` swaps the aggregation rule.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

import mmfl
from mmfl.config import RunPlan, SiteConfig, dump_toml, effective_cream
from mmfl.data.builtin import PreparedDataset
from mmfl.data.partition import holdout_split, site_seed
from mmfl.data.tensors import Tensors, featurizers_for, load_tensors
from mmfl.files import atomic_write_bytes, atomic_write_text
from mmfl.models.multimodal import MultiEncoder
from mmfl.paths import feature_cache_root
from mmfl.protocols.messages import (
    MSG_CAPABILITIES,
    Capabilities,
    CapabilitiesQuery,
    PrivacyStatus,
    RepresentInstruction,
    TrainSettings,
    WeightsInstruction,
)
from mmfl.protocols.records import ProtocolError, decode, encode
from mmfl.server.checkpoint import load_checkpoint, save_checkpoint
from mmfl.server.model import ServerTrainer
from mmfl.server.store import RunStore, open_store
from mmfl.strategies.cream import CreamEnsemble
from mmfl.strategies.fedavg import PairedFedAvg
from mmfl.strategies.mean import MeanEnsemble
from mmfl.strategies.representation import RepresentationStrategy

SITE_STRATEGIES = ("cream", "cream+", "mean", "local", "fedavg")
REPRESENTATION_STRATEGIES = ("cream", "cream+", "mean", "local")
SUMMARY_SCHEMA_VERSION = 1


def send_and_collect(
    grid: Grid, messages: list[Message], timeout: float, on_reply: Callable[[int, int], None] | None = None
) -> list[Message]:
    """Push ``messages`` and pull replies until all arrive or ``timeout`` passes, reporting
    progress as (done, total) after each poll."""
    ids = set(grid.push_messages(messages))
    total, replies = len(ids), []
    deadline = time.monotonic() + timeout
    while ids and time.monotonic() < deadline:
        got = list(grid.pull_messages(ids))
        for reply in got:
            ids.discard(reply.metadata.reply_to_message_id)
        replies.extend(got)
        if on_reply and got:
            on_reply(len(replies), total)
        if ids:
            time.sleep(0.2)
    return replies


def versions() -> dict[str, str]:
    import flwr
    import opacus

    out = {
        "mmfl": mmfl.__version__,
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            out["code"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class FederatedRun:
    """One run of a plan on a grid (``grid`` may be None for server-only / centralized)."""

    def __init__(
        self, plan: RunPlan, grid: Grid | None, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.cream = effective_cream(self.spec)
        self.grid = grid
        self.out = Path(plan.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress_path = self.out / "rounds.jsonl"
        self._progress_cb = progress
        self.dataset = PreparedDataset(Path(plan.dataset_root))
        self.by_class = self.dataset.info.pairing == "class"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.store = RunStore(open_store(plan.store_url), plan.run_id)
        self.rng = np.random.default_rng([self.spec.seed, 17])
        self.strategy = self._make_strategy()
        self.fedavg: PairedFedAvg | None = None
        self.architectures = (
            self.spec.fedavg_architectures()
            if self.spec.strategy == "fedavg"
            else dict(self.spec.server.architectures)
        )
        self.sites: dict[int, Capabilities] = {}
        self.records: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------
    def _make_strategy(self) -> RepresentationStrategy | None:
        kind = self.spec.strategy
        if kind not in REPRESENTATION_STRATEGIES:
            return None
        common = {
            "modalities": self.spec.modalities,
            "embed_dim": self.spec.embed_dim,
            "sites_per_round": self.cream.sites_per_round,
            "seed": self.spec.seed,
            "work_by_device": {"cuda": dict(self.spec.server.gpu_work)}
            if self.spec.server.gpu_work
            else None,
        }
        if kind == "mean":
            return MeanEnsemble(**common)
        return CreamEnsemble(
            **common, temperature=self.cream.ensemble_temperature, chunk=self.cream.aggregation_chunk
        )

    def _server_data(self) -> tuple[Tensors, Tensors, Tensors, Tensors]:
        info = self.dataset.info
        feats = featurizers_for(self.architectures, info.image_size, info.image_channels)
        feats = {m: f for m, f in feats.items() if m in self.spec.modalities}
        self._featurizers = feats
        cache = feature_cache_root()
        split = {
            s: load_tensors(self.dataset.manifest(s).samples, feats, info.classes, cache)
            for s in ("public", "val", "test")
        }
        own = split["public"]
        if self.spec.strategy == "centralized":
            own = concat([own, *self._pooled_site_data(feats)])
        return split["public"], own, split["val"], split["test"]

    def _pooled_site_data(self, feats: dict) -> list[Tensors]:  # noqa: ANN001
        """The sites' training rows exactly as the sites hold them (their modalities only)."""
        if self.plan.site_configs is None:
            raise ValueError("the centralized baseline needs the sites' configurations (simulation only)")
        from mmfl.data.fingerprint import sample_key
        from mmfl.data.manifest import load_manifest

        pooled = []
        for raw in json.loads(Path(self.plan.site_configs).read_text(encoding="utf-8")):
            cfg = SiteConfig.model_validate(raw)
            samples = load_manifest(cfg.manifest, self.dataset.info.modalities).samples
            data = load_tensors(samples, feats, self.dataset.info.classes, feature_cache_root())
            keys = [sample_key(x) for x in samples]
            train, _ = holdout_split(keys, site_seed(cfg.seed, cfg.site.id), cfg.holdout_fraction)
            data = data.subset(train)
            for m in data.present:
                if m not in cfg.site.modalities:
                    data.present[m] = torch.zeros_like(data.present[m])
            pooled.append(data)
        return pooled

    def discover(self) -> None:
        """Wait for the expected sites, ask their capabilities, register the compatible ones.

        A node that is not reachable yet (e.g. reconnecting after the coordinator restarted)
        is asked again until the expected number registered or ``discovery_timeout`` passed.
        """
        assert self.grid is not None
        deadline = time.monotonic() + self.plan.discovery_timeout
        query = CapabilitiesQuery(run_id=self.plan.run_id, public_fingerprint=self.public_fingerprint)
        settled: set[int] = set()  # registered or refused for good
        failed: set[int] = set()
        while True:
            nodes = sorted(n for n in self.grid.get_node_ids() if n not in settled)
            if nodes:
                messages = [
                    Message(encode(query), dst_node_id=n, message_type=MSG_CAPABILITIES) for n in nodes
                ]
                for msg in messages:
                    msg.metadata.group_id = "discovery"
                remaining = max(5.0, deadline - time.monotonic())
                replies = send_and_collect(
                    self.grid, messages, min(self.spec.server.round_timeout, remaining)
                )
                sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
                for reply in replies:
                    node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                    if reply.has_error():
                        if node not in failed:  # asked again below; reported once
                            self._event(
                                "site-error", f"node {node}: capabilities failed: {reply.error.reason}"
                            )
                            failed.add(node)
                        continue
                    settled.add(node)
                    self._register(node, reply)
            if len(settled) >= self.plan.expected_sites or time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        nodes = sorted(settled)
        if self.spec.strategy == "fedavg":
            common = self.architectures
            eligible = {n: c.site_id for n, c in self.sites.items() if c.architectures == common}
            for n, c in self.sites.items():
                if n not in eligible:
                    self._event(
                        "site-refused",
                        f"site {c.site_id}: architectures {c.architectures} differ from {common}",
                    )
            self.fedavg = PairedFedAvg(eligible)
        log(
            INFO,
            "registered %d of %d nodes: %s",
            len(self.sites),
            len(nodes),
            [c.site_id for c in self.sites.values()],
        )

    # -- helpers -------------------------------------------------------------------------------
    def _event(self, kind: str, message: str) -> None:
        log(WARNING if kind.endswith(("error", "refused", "failed")) else INFO, "%s: %s", kind, message)
        self.store.event(kind, message)
        self._emit({"event": kind, "message": message})

    def _emit(self, record: dict[str, Any]) -> None:
        with self.progress_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
        if self._progress_cb:
            self._progress_cb(record)

    def _settings(self) -> TrainSettings:
        t = self.spec.train
        return TrainSettings(
            local_epochs=t.local_epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            weight_decay=t.weight_decay,
            public_batch_size=t.public_batch_size,
            contrast_temperature=self.cream.contrast_temperature,
            interintra_weight=self.cream.interintra_weight,
            regularisers=self.spec.strategy != "local",
            regulariser_mode=self.cream.regulariser_mode,
            payload_dtype=self.cream.payload_dtype,
        )

    def _round_rows(self, public: Tensors) -> tuple[list[int], dict[str, list[int]]]:
        n = len(public)
        subset = self.cream.public_subset
        if subset is None or subset >= n:
            indices = list(range(n))
        else:
            indices = sorted(self.rng.choice(n, size=subset, replace=False).tolist())
        present = {m: public.present[m] for m in self.spec.modalities}
        rows = {m: [i for i in indices if bool(present[m][i])] for m in self.spec.modalities}
        return indices, rows

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
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
        public, own, val, test = self._server_data()
        self.public_fingerprint = self.dataset.manifest("public").fingerprint()
        shapes = {m: f.shape for m, f in self._featurizers.items()}
        model = MultiEncoder(
            {m: a for m, a in self.architectures.items() if m in self.spec.modalities},
            shapes,
            self.spec.embed_dim,
            len(self.dataset.info.classes),
            seed=self.spec.seed,
        )
        trainer = ServerTrainer(model, self.spec.server, self.cream, self.by_class, self.device)
        self.trainer = trainer
        pairs = [
            (self.spec.modalities[i], self.spec.modalities[j])
            for i in range(len(self.spec.modalities))
            for j in range(i + 1, len(self.spec.modalities))
        ]
        if self.spec.strategy in SITE_STRATEGIES:
            if self.grid is None:
                raise ValueError(f"strategy {self.spec.strategy} needs sites")
            self.discover()
        first = self._resume(trainer) + 1 if self.plan.resume else 1
        self._emit(
            {
                "event": "start",
                "rounds": self.spec.rounds,
                "first_round": first,
                "sites": [c.site_id for c in self.sites.values()],
            }
        )
        for r in range(first, self.spec.rounds + 1):
            self.records.append(self._round(r, trainer, public, own, val, test, pairs))
        final = {"retrieval": None, "val_retrieval": None, "site_metrics": {}}
        if self.spec.strategy != "local":
            final["retrieval"] = trainer.retrieval(test, pairs)
            final["val_retrieval"] = trainer.retrieval(val, pairs)
        if self.spec.strategy in REPRESENTATION_STRATEGIES and self.sites:
            final["site_metrics"] = self._evaluate_sites()
        wall = time.perf_counter() - started
        summary = self._summary(final, wall)
        atomic_write_text(
            self.out / "summary.json", json.dumps(finite(summary), indent=2, default=_json_default)
        )
        evidence = self._evidence(summary, trainer)
        atomic_write_text(
            self.out / "evidence.json", json.dumps(finite(evidence), indent=2, default=_json_default)
        )
        failed = sum(1 for rec in self.records if rec["status"] != "completed")
        self.store.finish("completed" if not failed else "completed-with-failed-rounds", final)
        self._emit({"event": "finish", "wall_seconds": wall, "final": final})
        return summary

    def _round(
        self,
        r: int,
        trainer: ServerTrainer,
        public: Tensors,
        own: Tensors,
        val: Tensors,
        test: Tensors,
        pairs,
    ) -> dict[str, Any]:  # noqa: ANN001
        t0 = time.perf_counter()
        record: dict[str, Any] = {"round": r, "status": "completed", "reason": "", "server": {}, "sites": []}
        self._emit({"event": "round-start", "round": r})
        if self.spec.strategy not in ("local", "fedavg"):
            losses = [trainer.train_epoch(own, self.rng) for _ in range(self.spec.server.epochs_per_round)]
            record["server"]["train_loss"] = losses[-1]
        if self.fedavg is not None:
            self._fedavg_round(r, trainer, record)
        if self.strategy is not None:
            indices, rows = self._round_rows(public)
            globals_ = trainer.encode(public, rows)
            instruction = RepresentInstruction(
                run_id=self.plan.run_id,
                round=r,
                public_fingerprint=self.public_fingerprint,
                public_indices=indices,
                rows=rows,
                embed_dim=self.spec.embed_dim,
                settings=self._settings(),
            )
            wire = ArrayRecord(
                {m: Array(g.numpy().astype(self.cream.payload_dtype)) for m, g in globals_.items()}
            )
            messages = list(
                self.strategy.configure_train(
                    r, wire, ConfigRecord({"instruction": instruction.model_dump_json()}), self.grid
                )
            )
            for msg in messages:
                msg.metadata.group_id = str(r)
            replies = send_and_collect(
                self.grid,
                messages,
                self.spec.server.round_timeout,
                lambda done, total: self._emit({"event": "sites", "round": r, "done": done, "total": total}),
            )
            self.strategy.remember_sent(messages)
            aggregated, _ = self.strategy.aggregate_train(r, replies)
            report = self.strategy.last_round
            record["sites"] = [asdict(s) for s in report.sites]
            record["weight_entropy"] = report.weight_entropy
            record["contributors"] = report.contributors
            accepted = len(report.accepted)
            if accepted < self.spec.server.min_sites:
                record["status"] = "failed"
                record["reason"] = (
                    f"{accepted} sites accepted, fewer than the minimum of {self.spec.server.min_sites}"
                )
                self._event("round-failed", f"round {r}: {record['reason']}")
            elif aggregated is not None and self.spec.strategy != "local":
                targets = {m: torch.from_numpy(aggregated[m].numpy()) for m in aggregated}
                record["server"]["distill_loss"] = trainer.distill(
                    public, {m: rows[m] for m in targets}, targets, self.rng
                )
        if self.spec.strategy != "local":
            record["server"]["val"] = trainer.retrieval(val, pairs)
            record["server"]["test"] = trainer.retrieval(test, pairs)
        record["wall_seconds"] = time.perf_counter() - t0
        record["bytes_down"] = sum(s["bytes_down"] for s in record["sites"])
        record["bytes_up"] = sum(s["bytes_up"] for s in record["sites"])
        record["privacy"] = {s["site_id"]: s["epsilon"] for s in record["sites"] if s["epsilon"] is not None}
        path, digest = save_checkpoint(
            self.out / "checkpoints",
            r,
            {
                "trainer": trainer.state_dict(),
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.random.get_rng_state(),
                "strategy_rng": self.strategy.rng.getstate() if self.strategy is not None else None,
                "records": [*self.records, record],
            },
            self.plan.keep_checkpoints,
        )
        self.store.add_checkpoint(r, str(path), digest)
        self.store.add_round(
            r, record["status"], record["reason"], record["wall_seconds"], record["server"], record["sites"]
        )
        self._emit({"event": "round", **record})
        return record

    def _resume(self, trainer: ServerTrainer) -> int:
        """Continue after the newest checkpoint: model, optimizer, random states, the rounds so
        far (re-recorded in the store if the crash came between checkpoint and record). Returns
        the last completed round (0 when there is no checkpoint)."""
        checkpoints = sorted((self.out / "checkpoints").glob("round-*.pt"))
        if not checkpoints:
            self._event("resume", "no checkpoint to resume from; starting at round 1")
            return 0
        state = load_checkpoint(checkpoints[-1])
        trainer.load_state_dict(state["trainer"])
        self.rng.bit_generator.state = state["rng"]
        torch.random.set_rng_state(state["torch_rng"])
        if self.strategy is not None and state.get("strategy_rng") is not None:
            self.strategy.rng.setstate(state["strategy_rng"])
        self.records = list(state["records"])
        stored = {row.round for row in self.store.rounds()}
        for rec in self.records:
            if rec["round"] not in stored:
                self.store.add_round(
                    rec["round"],
                    rec["status"],
                    rec["reason"],
                    rec["wall_seconds"],
                    rec["server"],
                    rec["sites"],
                )
        last = int(state["round"])
        self._event("resume", f"resumed after round {last} from {checkpoints[-1].name}")
        return last

    def _evidence(self, summary: dict[str, Any], trainer: ServerTrainer) -> dict[str, Any]:
        """What a governance reviewer asks for, in one file."""
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, buffer)
        atomic_write_bytes(self.out / "final_model.pt", buffer.getvalue())
        last_eps: dict[str, float] = {}
        for rec in self.records:
            last_eps.update(rec.get("privacy", {}))
        return {
            "run_id": self.plan.run_id,
            "code": summary["versions"],
            "config": summary["config"],
            "public_set": {"name": self.dataset.info.name, "fingerprint": self.public_fingerprint},
            "sites": [
                {
                    "id": c.site_id,
                    "data_fingerprint": c.data_fingerprint,
                    "modalities": c.modalities,
                    "architectures": c.architectures,
                    "privacy": c.privacy.model_dump(),
                    "privacy_statement": privacy_statement(c.privacy, last_eps.get(c.site_id)),
                    "epsilon_spent_last_round": last_eps.get(c.site_id),
                }
                for c in self.sites.values()
            ],
            "rounds": {
                "planned": self.spec.rounds,
                "completed": sum(1 for r in self.records if r["status"] == "completed"),
                "failed": sum(1 for r in self.records if r["status"] != "completed"),
            },
            "final_model": {
                "path": "final_model.pt",
                "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            },
            "final_metrics": summary["final"],
        }

    def _register(self, node: int, reply: Message) -> None:
        try:
            caps = decode(reply.content, Capabilities)
        except ProtocolError as exc:
            self._event("site-refused", f"node {node}: {exc}")
            return
        if caps.public_fingerprint != self.public_fingerprint:
            self._event("site-refused", f"site {caps.site_id}: public-set fingerprint differs; excluded")
            return
        bad = [m for m in caps.modalities if m not in self.spec.modalities]
        if bad:
            self._event("site-refused", f"site {caps.site_id}: modality {bad[0]} is not in this federation")
            return
        self.sites[node] = caps
        if self.strategy is not None:
            self.strategy.register(node, caps)
        self.store.add_site(caps.site_id, caps.model_dump())

    def _fedavg_round(self, r: int, trainer: ServerTrainer, record: dict[str, Any]) -> None:
        """Send the global weights, let the paired sites train, average with Flower's FedAvg."""
        assert self.fedavg is not None and self.grid is not None
        state = ArrayRecord(
            {k: Array(v.detach().cpu().numpy()) for k, v in trainer.model.state_dict().items()}
        )
        instruction = WeightsInstruction(run_id=self.plan.run_id, round=r, settings=self._settings())
        messages = list(
            self.fedavg.configure_train(
                r, state, ConfigRecord({"instruction": instruction.model_dump_json()}), self.grid
            )
        )
        replies = send_and_collect(
            self.grid,
            messages,
            self.spec.server.round_timeout,
            lambda done, total: self._emit({"event": "sites", "round": r, "done": done, "total": total}),
        )
        self.fedavg.remember_sent(messages)
        averaged, _ = self.fedavg.aggregate_train(r, replies)
        record["sites"] = [asdict(s) for s in self.fedavg.last_round.sites]
        accepted = len(self.fedavg.last_round.accepted)
        if accepted < self.spec.server.min_sites or averaged is None:
            record["status"] = "failed"
            record["reason"] = (
                f"{accepted} sites accepted, fewer than the minimum of {max(1, self.spec.server.min_sites)}"
            )
            self._event("round-failed", f"round {r}: {record['reason']}")
            return
        trainer.model.load_state_dict(
            {k: v.to(self.device) for k, v in averaged.to_torch_state_dict().items()}
        )

    def _evaluate_sites(self) -> dict[str, dict[str, float]]:
        assert self.strategy is not None and self.grid is not None
        messages = list(
            self.strategy.configure_evaluate(
                self.spec.rounds, ArrayRecord(), ConfigRecord({"run-id": self.plan.run_id}), self.grid
            )
        )
        replies = send_and_collect(self.grid, messages, self.spec.server.round_timeout)
        self.strategy.aggregate_evaluate(self.spec.rounds, replies)
        return dict(self.strategy.last_evaluation)

    def _summary(self, final: dict[str, Any], wall: float) -> dict[str, Any]:
        info = self.dataset.info
        sites = [
            {
                "id": c.site_id,
                "modalities": c.modalities,
                "architectures": c.architectures,
                "private_samples": c.samples,
                "paired_samples": c.paired_samples,
                "private_units_noisy": c.privacy.noisy_units,
                "device": c.device.model_dump(),
                "privacy": c.privacy.model_dump(),
            }
            for c in self.sites.values()
        ]
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "run_id": self.plan.run_id,
            "name": self.spec.name,
            "strategy": self.spec.strategy,
            "dataset": {
                "name": info.name,
                "pairing": info.pairing,
                "splits": info.splits,
                "public_fingerprint": self.public_fingerprint,
            },
            "modalities": self.spec.modalities,
            "embed_dim": self.spec.embed_dim,
            "seed": self.spec.seed,
            "server": {"architectures": self.spec.server.architectures},
            "sites": sites,
            "rounds": [
                {
                    "round": rec["round"],
                    "status": rec["status"],
                    "reason": rec["reason"],
                    "wall_seconds": rec["wall_seconds"],
                    "bytes_down": rec["bytes_down"],
                    "bytes_up": rec["bytes_up"],
                    "server_metrics": rec["server"],
                    "privacy": rec["privacy"],
                    "weight_entropy": rec.get("weight_entropy", {}),
                    "sites": [
                        {
                            k: s[k]
                            for k in (
                                "site_id",
                                "accepted",
                                "reason",
                                "bytes_down",
                                "bytes_up",
                                "epsilon",
                                "metrics",
                            )
                        }
                        for s in rec["sites"]
                    ],
                }
                for rec in self.records
            ],
            "final": final,
            # DP sites draw noise and batches from OS entropy: their runs cannot be replayed.
            "reproducible": not any(c.privacy.enabled for c in self.sites.values()),
            "wall_seconds": wall,
            "versions": versions(),
            "config": json.loads(json.dumps(self.spec.model_dump(mode="json"))),
            "config_toml": dump_toml(self.spec),
        }


def privacy_statement(status: PrivacyStatus, epsilon: float | None) -> str:
    """One sentence a governance reviewer can quote for a site."""
    if not status.enabled:
        return "no differential privacy: what this site sent is not protected by any epsilon"
    spent = status.epsilon_spent if epsilon is None else epsilon
    return (
        f"{status.unit}-level DP with add-or-remove-one adjacency at delta {status.delta:g}: epsilon "
        f"{spent:.4f} spent of a budget of {status.target_epsilon:g}, covering every representation, "
        "model and count this site sent; its size left it only as an epsilon-DP count; DP noise and "
        "batches came from OS entropy (not reproducible)"
    )


def concat(parts: Iterable[Tensors]) -> Tensors:
    parts = list(parts)
    return Tensors(
        {m: torch.cat([p.inputs[m] for p in parts]) for m in parts[0].inputs},
        {m: torch.cat([p.present[m] for p in parts]) for m in parts[0].present},
        torch.cat([p.labels for p in parts]),
    )


def finite(value: Any) -> Any:
    """A copy with NaN and infinities replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
