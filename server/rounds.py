"""One round as a pipeline (design: "one round, as data flows"), driven by the run's
:class:`~mmfl.strategies.methods.Method`:

1. the server trains on its data (``method.server_data``);
2. the sites work (``method.site_work``):

   * ``represent``: the server encodes this round's public rows (the global representations),
     the sampled sites train and reply with theirs, the method's rule merges them per modality
     and the server distils toward the result;
   * ``weights``: the sites train the global weights, and their weighted average becomes the
     server model (FedAvg);
   * ``local``: the sites train alone; nothing is merged;
   * ``regress`` (``method.transfer``): the coordinator draws mixed public items, the sites
     train (on their rows and the public pairs) and send their representations of them, and
     the server regresses onto their concatenation; no global representations go down. Sites
     of one shape form a group (:mod:`mmfl.strategies.groups`): they train the group's weights,
     the coordinator averages them and the group's model represents the items, as one site;

3. the server model is evaluated on val and test.

A round with fewer accepted sites than ``server.min_sites`` is recorded as failed and nothing
from it reaches the server model. The result is one :class:`~mmfl.server.records.RoundRecord`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mmfl.config import CreamConfig, FederationSpec
from mmfl.data.mixing import draw_mix_plan
from mmfl.errors import ConfigError
from mmfl.protocols.messages import RepresentInstruction, TrainSettings, WeightsInstruction
from mmfl.protocols.records import from_wire, to_wire
from mmfl.server.data import ServerData
from mmfl.server.exchange import SiteExchange
from mmfl.server.groups import GroupModels
from mmfl.server.model import ServerTrainer
from mmfl.server.records import RoundRecord
from mmfl.server.sites import SiteSampler
from mmfl.strategies.fedavg import momentum_step, weighted_average
from mmfl.strategies.groups import Group, form_groups
from mmfl.strategies.methods import Method

Event = Callable[[str, str], None]


@contextlib.contextmanager
def timed(record: RoundRecord, phase: str) -> Iterator[None]:
    """Add the time spent in the block to ``record.phase_seconds[phase]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record.phase_seconds[phase] = record.phase_seconds.get(phase, 0.0) + time.perf_counter() - t0


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
        self._announced: dict[str, list[str]] = {}
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
        if self.method.site_work == "weights":
            self._weights(record)
        elif self.method.transfer == "regress":
            self._regress(record)
        elif self.method.site_work is not None:
            self._represent(record)
        elif self.method.self_targets:
            self._self_distil(record)
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

    def _regress_settings(self, round_: int) -> TrainSettings:
        """In the first ``regress.teacher_rounds`` the sites train ``regress.teacher_epochs``
        local epochs; after them they train no more and only represent (a DP site then spends
        no epsilon: representing with its DP-trained model is post-processing)."""
        settings, config = self.settings(), self.spec.regress
        if config.teacher_rounds is not None and round_ > config.teacher_rounds:
            return settings.model_copy(update={"local_epochs": 0})
        if config.teacher_epochs is not None:
            return settings.model_copy(update={"local_epochs": config.teacher_epochs})
        return settings

    def _round_rows(self) -> tuple[list[int], dict[str, list[int]]]:
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

    def _enough(self, record: RoundRecord, minimum: int) -> bool:
        accepted = len(record.accepted)
        if accepted >= minimum:
            return True
        record.fail(f"{accepted} sites accepted, fewer than the minimum of {minimum}")
        self.event("round-failed", f"round {record.round}: {record.reason}")
        return False

    def _represent(self, record: RoundRecord) -> None:
        """Representation exchange (``local``: the sites train alone, nothing is asked back)."""
        assert self.exchange is not None
        exchanging = self.method.site_work == "represent"
        indices, rows = self._round_rows() if exchanging else ([], {})
        with timed(record, "encode"):
            wire = {
                m: to_wire(g.numpy(), self.cream.payload_dtype)
                for m, g in self.trainer.encode(self.data.public, rows).items()
            }
        instruction = RepresentInstruction(
            run_id=self.run_id,
            round=record.round,
            public_fingerprint=self.public_fingerprint,
            public_indices=indices,
            rows=rows,
            embed_dim=self.spec.embed_dim,
            settings=self.settings(),
        )
        accepted = self._exchange_represent(record, instruction, wire)
        if self.rule is None:
            self._enough(record, self.spec.server.min_sites)
            return
        self._merge_and_distil(
            record,
            {m: [reps[m] for reps in accepted.values() if m in reps] for m in self.spec.modalities},
            {m: torch.from_numpy(from_wire(a)) for m, a in wire.items()},  # as the sites saw them
            rows,
            enough=lambda: self._enough(record, self.spec.server.min_sites),
        )

    def _regress(self, record: RoundRecord) -> None:
        """Representation regression: the coordinator draws this round's mixed public items,
        the sampled sites train and send their representations of them, and the server
        regresses onto their concatenation (:mod:`mmfl.strategies.regression`)."""
        assert self.exchange is not None
        public = self.data.public
        paired = public.complete_rows(self.spec.modalities).tolist()
        if not paired:
            raise ConfigError(
                f"strategy regress mixes public rows that hold every modality of the spec "
                f"({', '.join(self.spec.modalities)}); the public set has none"
            )
        items = self.spec.regress.mix_items or 10 * len(paired)
        plan = draw_mix_plan(self.rng, paired, items, self.spec.modalities)
        instruction = RepresentInstruction(
            run_id=self.run_id,
            round=record.round,
            public_fingerprint=self.public_fingerprint,
            public_indices=[],
            rows={},
            embed_dim=self.spec.embed_dim,
            settings=self._regress_settings(record.round),
            mix=plan,
        )
        registry = self.exchange.registry
        nodes = self.sampler.sample(registry.online(self.exchange.grid), registry.site_id)
        groups, alone = self._groups(nodes)
        record.sites = []
        contributions: dict[str, dict[str, torch.Tensor]] = {}
        if alone:
            with timed(record, "exchange"):
                record.sites, accepted = self.exchange.represent(alone, instruction, {})
            contributions = {registry.site_id(n): reps for n, reps in accepted.items()}
        for group in groups:
            contributions.update(self._group_round(record, group, instruction))
        record.contributors = {
            m: sum(m in reps for reps in contributions.values()) for m in self.spec.modalities
        }
        if not self._enough(record, self.spec.server.min_sites) or not contributions:
            return
        with timed(record, "distil"):
            record.server.distill_loss = self.trainer.regress(
                public, plan, contributions, self.spec.regress.weight, self.spec.regress.passes, self.rng
            )

    def _groups(self, nodes: Sequence[int]) -> tuple[list[Group], list[int]]:
        """This round's groups among the sampled ``nodes`` and the sites that take part alone
        (:func:`~mmfl.strategies.groups.form_groups`; none with ``regress.groups = "off"``)."""
        if self.group_models is None or self.spec.regress.groups == "off":
            return [], list(nodes)
        sites = self.exchange.registry.sites if self.exchange is not None else {}
        groups, alone = form_groups(
            {n: (sites[n].modalities, sites[n].architectures, sites[n].shares_weights) for n in nodes}
        )
        named = {g.name: [self.exchange.registry.site_id(n) for n in g.members] for g in groups}  # type: ignore[union-attr]
        if named != self._announced:
            for name, members in named.items():
                self.event("group", f"{name}: {', '.join(members)} averaged (FedAvgM), one participant")
            self._announced = named
        return groups, alone

    def _group_round(
        self, record: RoundRecord, group: Group, instruction: RepresentInstruction
    ) -> dict[str, dict[str, torch.Tensor]]:
        """One group's round: its members train the group's weights (``train.weights``, with the
        round's regress settings), the coordinator averages them with momentum, and the group's
        model represents the round's mixed items; nothing when no member's weights came back."""
        assert self.exchange is not None and self.group_models is not None and instruction.mix is not None
        order = WeightsInstruction(run_id=self.run_id, round=record.round, settings=instruction.settings)
        with timed(record, "exchange"):
            reports, got = self.exchange.weights(list(group.members), order, self.group_models.current(group))
        record.sites += reports
        if not got:
            return {}
        trained = [got[n] for n in sorted(got)]
        self.group_models.update(group, [t.weights for t in trained], [t.examples for t in trained])
        with timed(record, "group-encode"):
            return {group.name: self.group_models.represent(group, instruction.mix)}

    def _exchange_represent(
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

    def _self_distil(self, record: RoundRecord) -> None:
        """The site-free control: the server's own representations, as sites would receive
        them, are the one contribution the rule merges; the server distils toward the result."""
        assert self.rule is not None
        _, rows = self._round_rows()
        sent = {
            m: torch.from_numpy(from_wire(to_wire(g.numpy(), self.cream.payload_dtype)))
            for m, g in self.trainer.encode(self.data.public, rows).items()
        }
        self._merge_and_distil(record, {m: [g] for m, g in sent.items()}, sent, rows, enough=lambda: True)

    def _merge_and_distil(
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

    def _weights(self, record: RoundRecord) -> None:
        """The FedAvg family: the global weights out, the sites' trained copies back; with
        ``public_participant`` the coordinator trains one more copy on the public set; the
        weighted average (then FedAvgM's momentum step) becomes the global model."""
        assert self.exchange is not None
        state = {k: v.detach().cpu().numpy().copy() for k, v in self.trainer.model.state_dict().items()}
        instruction = WeightsInstruction(run_id=self.run_id, round=record.round, settings=self.settings())
        nodes = self.exchange.registry.online(self.exchange.grid)
        with timed(record, "exchange"):
            record.sites, accepted = self.exchange.weights(nodes, instruction, state)
        if not self._enough(record, max(1, self.spec.server.min_sites)):
            return
        got = [accepted[n] for n in sorted(accepted)]
        weights, examples = [g.weights for g in got], [g.examples for g in got]
        if self.fedavg.public_participant:
            losses = [
                self.trainer.train_epoch(self.data.public, self.rng)
                for _ in range(self.spec.server.epochs_per_round)
            ]
            record.server.train_loss = losses[-1]
            weights.insert(
                0, {k: v.detach().cpu().numpy() for k, v in self.trainer.model.state_dict().items()}
            )
            examples.insert(0, len(self.data.public))
        averaged = weighted_average(weights, examples)
        if self.fedavg.server_momentum > 0 or self.fedavg.server_lr != 1.0:
            averaged, self.trainer.velocity = momentum_step(
                state, averaged, self.trainer.velocity, self.fedavg.server_momentum, self.fedavg.server_lr
            )
        device = self.trainer.device
        self.trainer.model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in averaged.items()}
        )

    def evaluate_sites(self, nodes: Sequence[int]) -> dict[str, dict[str, float]]:
        """The sites' own metrics on their held-out rows (methods where sites keep a model)."""
        if self.exchange is None or self.method.site_work not in ("represent", "local"):
            return {}
        return self.exchange.evaluate(nodes, self.run_id, self.spec.rounds)
