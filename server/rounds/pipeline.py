"""One round as a pipeline (design: "one round, as data flows"), driven by the run's
:class:`~mmfl.strategies.methods.Method`:

1. the server trains on its data (``method.server_data``);
2. the sites work, as the method's kind of round says (one class per file: :mod:`.represent`,
   :mod:`.regress` with groups, :mod:`.weights`, :mod:`.site_free`; :func:`round_kind`);
3. the server model is evaluated on val and test.

A round with fewer accepted sites than ``server.min_sites`` is recorded as failed and nothing
from it reaches the server model. The result is one :class:`~mmfl.server.records.RoundRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from mmfl.config import CreamConfig, FederationSpec
from mmfl.protocols.messages import RepresentInstruction, TrainSettings
from mmfl.server.data import ServerData
from mmfl.server.exchange import SiteExchange
from mmfl.server.groups import GroupModels
from mmfl.server.model import ServerTrainer
from mmfl.server.records import RoundRecord
from mmfl.server.rounds.regress import RegressRound
from mmfl.server.rounds.represent import RepresentRound
from mmfl.server.rounds.site_free import SiteFreeRound
from mmfl.server.rounds.timing import timed
from mmfl.server.rounds.weights import WeightsRound
from mmfl.server.sites import SiteSampler
from mmfl.strategies.methods import Method

Event = Callable[[str, str], None]


class RoundPipeline:
    """Runs rounds of one method; owns nothing durable (the run checkpoints the trainer and
    the random states)."""

    def __init__(
        self,
        run_id: str,
        spec: FederationSpec,
        method: Method,
        cream: CreamConfig,
        trainer: ServerTrainer,
        data: ServerData,
        public_fingerprint: str,
        rng: np.random.Generator,
        sampler: SiteSampler,
        exchange: SiteExchange | None,
        event: Event,
        group_models: GroupModels | None = None,
    ) -> None:
        self.run_id = run_id
        self.spec = spec
        self.method = method
        self.cream = cream
        self.fedavg = method.fedavg(spec.fedavg)
        self.rule = method.rule(cream)
        self.trainer = trainer
        self.data = data
        self.public_fingerprint = public_fingerprint
        self.rng = rng
        self.sampler = sampler
        self.exchange = exchange
        self.event = event
        self.group_models = group_models
        self.kind = round_kind(method, self)
        mods = spec.modalities
        self.pairs = [(mods[i], mods[j]) for i in range(len(mods)) for j in range(i + 1, len(mods))]

    # -- the round -----------------------------------------------------------------------------
    def run(self, r: int) -> RoundRecord:
        t0 = time.perf_counter()
        record = RoundRecord(round=r)
        if self.method.server_data is not None:
            with timed(record, "server-train"):
                losses = [
                    self.trainer.train_epoch(self.data.own, self.rng)
                    for _ in range(self.spec.server.epochs_per_round)
                ]
            record.server.train_loss = losses[-1]
        if self.kind is not None:
            self.kind.run(record)
        if self.method.has_server_model:
            with timed(record, "evaluate"):
                record.server.val = self.trainer.retrieval(self.data.val, self.pairs)
                record.server.test = self.trainer.retrieval(self.data.test, self.pairs)
        record.wall_seconds = time.perf_counter() - t0
        return record

    def final(self) -> dict[str, dict[str, float] | None]:
        """The server model's retrieval on test and val after the last round (None without one)."""
        if not self.method.has_server_model:
            return {"retrieval": None, "val_retrieval": None}
        return {
            "retrieval": self.trainer.retrieval(self.data.test, self.pairs),
            "val_retrieval": self.trainer.retrieval(self.data.val, self.pairs),
        }

    # -- site work -----------------------------------------------------------------------------
    def settings(self) -> TrainSettings:
        t = self.spec.train
        return TrainSettings(
            local_epochs=t.local_epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            weight_decay=t.weight_decay,
            public_batch_size=t.public_batch_size,
            contrast_temperature=self.cream.contrast_temperature,
            interintra_weight=self.cream.interintra_weight,
            regularisers=self.method.site_work == "represent" and self.method.transfer == "ensemble",
            regulariser_mode=self.cream.regulariser_mode,
            payload_dtype=self.cream.payload_dtype,
            proximal_mu=self.fedavg.proximal_mu if self.method.site_work == "weights" else 0.0,
            # Control sites already train on the public set (their "private" rows are it).
            public_pairs=self.method.transfer == "regress" and self.method.site_data == "private",
        )

    def round_rows(self) -> tuple[list[int], dict[str, list[int]]]:
        """This round's public rows (a random subset when ``cream.public_subset`` is set) and,
        per modality, those holding it."""
        public = self.data.public
        n = len(public)
        subset = self.cream.public_subset
        if subset is None or subset >= n:
            indices = list(range(n))
        else:
            indices = sorted(self.rng.choice(n, size=subset, replace=False).tolist())
        return indices, {m: [i for i in indices if bool(public.present[m][i])] for m in self.spec.modalities}

    def enough(self, record: RoundRecord, minimum: int) -> bool:
        accepted = len(record.accepted)
        if accepted >= minimum:
            return True
        record.fail(f"{accepted} sites accepted, fewer than the minimum of {minimum}")
        self.event("round-failed", f"round {record.round}: {record.reason}")
        return False

    def exchange_represent(
        self, record: RoundRecord, instruction: RepresentInstruction, wire: dict[str, np.ndarray]
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Send ``instruction`` (and the global arrays ``wire``) to this round's sampled online
        sites; record their reports; the accepted sites' representations by node."""
        assert self.exchange is not None
        registry = self.exchange.registry
        nodes = self.sampler.sample(registry.online(self.exchange.grid), registry.site_id)
        with timed(record, "exchange"):
            record.sites, accepted = self.exchange.represent(nodes, instruction, wire)
        return accepted

    def merge_and_distil(
        self,
        record: RoundRecord,
        contributions: dict[str, list[torch.Tensor]],
        sent: dict[str, torch.Tensor],
        rows: dict[str, list[int]],
        enough: Callable[[], bool],
    ) -> None:
        """Merge the contributions with the method's rule (scored against the global
        representations ``sent``) and, when ``enough()`` holds, distil toward the result."""
        assert self.rule is not None
        with timed(record, "merge"):
            aggregate = self.rule.aggregate(contributions, sent, rows)
        record.weight_entropy, record.contributors = aggregate.weight_entropy, aggregate.contributors
        if enough() and aggregate.targets:
            with timed(record, "distil"):
                record.server.distill_loss = self.trainer.distill(
                    self.data.public, {m: rows[m] for m in aggregate.targets}, aggregate.targets, self.rng
                )

    def evaluate_sites(self, nodes: Sequence[int]) -> dict[str, dict[str, float]]:
        """The sites' own metrics on their held-out rows (methods where sites keep a model)."""
        if self.exchange is None or self.method.site_work not in ("represent", "local"):
            return {}
        return self.exchange.evaluate(nodes, self.run_id, self.spec.rounds)


class RoundKind(Protocol):
    """One kind of round's site work (one class per file in this package)."""

    def run(self, record: RoundRecord) -> None: ...


def round_kind(method: Method, pipeline: RoundPipeline) -> RoundKind | None:
    """The round class for ``method``, read from its registry fields (never its name); None
    when the round is the server's own epoch alone (``server-only``, ``centralized``)."""
    if method.site_work == "weights":
        return WeightsRound(pipeline)
    if method.transfer == "regress":
        return RegressRound(pipeline)
    if method.site_work is not None:
        return RepresentRound(pipeline)
    if method.self_targets:
        return SiteFreeRound(pipeline)
    return None
