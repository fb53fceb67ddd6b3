"""Representation regression: one round of the ``regress`` family, groups included."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmfl.data.mixing import draw_mix_plan
from mmfl.data.tensors import Tensors
from mmfl.errors import ConfigError
from mmfl.protocols.messages import RepresentInstruction, TrainSettings, WeightsInstruction
from mmfl.server.records import RoundRecord
from mmfl.server.rounds.context import RoundContext
from mmfl.server.rounds.timing import timed
from mmfl.strategies.groups import Group, form_groups


class RegressRound:
    """``transfer = "regress"``: the coordinator draws mixed public items, the sites (and groups,
    :mod:`mmfl.strategies.groups`) send their representations of them, and the server regresses
    onto their concatenation through one map per participant:
    :math:`L = w \\cdot \\mathrm{mean}_{m,i}\\,(1 - \\cos(A_k f_m(x_i), t_{k,m,i}))` over participants
    :math:`k` (:mod:`mmfl.strategies.regression`). A modality's items also mix the public set's
    unpaired rows of it (the pool). No global representations go down."""

    def __init__(self, pipeline: RoundContext) -> None:
        self.pipeline = pipeline
        self._announced: dict[str, list[str]] = {}

    def run(self, record: RoundRecord) -> None:
        """Representation regression: the coordinator draws this round's mixed public items,
        the sampled sites train and send their representations of them, and the server
        regresses onto their concatenation (:mod:`mmfl.strategies.regression`)."""
        p = self.pipeline
        assert p.exchange is not None
        public = p.data.public
        paired = public.complete_rows(p.spec.modalities).tolist()
        if not paired:
            raise ConfigError(
                f"strategy regress mixes public rows that hold every modality of the spec "
                f"({', '.join(p.spec.modalities)}); the public set has none"
            )
        items = p.spec.regress.mix_items or 10 * len(paired)
        pool = unpaired_rows(public, p.spec.modalities)
        plan = draw_mix_plan(p.rng, paired, items, p.spec.modalities, pool, p.spec.regress.pool_share)
        instruction = RepresentInstruction(
            run_id=p.run_id,
            round=record.round,
            public_fingerprint=p.public_fingerprint,
            public_indices=[],
            rows={},
            embed_dim=p.spec.embed_dim,
            settings=self._regress_settings(record.round),
            mix=plan,
        )
        registry = p.exchange.registry
        nodes = p.sampler.sample(registry.online(p.exchange.grid), registry.site_id)
        groups, alone = self._groups(nodes)
        record.sites = []
        contributions: dict[str, dict[str, torch.Tensor]] = {}
        if alone:
            with timed(record, "exchange"):
                record.sites, accepted = p.exchange.represent(alone, instruction, {})
            contributions = {registry.site_id(n): reps for n, reps in accepted.items()}
        for group in groups:
            contributions.update(self._group_round(record, group, instruction))
        record.contributors = {
            m: sum(m in reps for reps in contributions.values()) for m in p.spec.modalities
        }
        if not p.enough(record, p.spec.server.min_sites) or not contributions:
            return
        with timed(record, "distil"):
            record.server.distill_loss = p.trainer.regress(
                public, plan, contributions, p.spec.regress.weight, p.spec.regress.passes, p.rng
            )

    def _regress_settings(self, round_: int) -> TrainSettings:
        """In the first ``regress.teacher_rounds`` the sites train ``regress.teacher_epochs``
        local epochs; after them they train no more and only represent (a DP site then spends
        no epsilon: representing with its DP-trained model is post-processing)."""
        p = self.pipeline
        settings, config = p.settings(), p.spec.regress
        if config.teacher_rounds is not None and round_ > config.teacher_rounds:
            return settings.model_copy(update={"local_epochs": 0})
        if config.teacher_epochs is not None:
            return settings.model_copy(update={"local_epochs": config.teacher_epochs})
        return settings

    def _groups(self, nodes: Sequence[int]) -> tuple[list[Group], list[int]]:
        """This round's groups among the sampled ``nodes`` and the sites that take part alone
        (:func:`~mmfl.strategies.groups.form_groups`; none with ``regress.groups = "off"``)."""
        p = self.pipeline
        if p.group_models is None or p.spec.regress.groups == "off":
            return [], list(nodes)
        assert p.exchange is not None
        registry = p.exchange.registry
        sites = registry.sites
        groups, alone = form_groups(
            {n: (sites[n].modalities, sites[n].architectures, sites[n].shares_weights) for n in nodes}
        )
        named = {g.name: [registry.site_id(n) for n in g.members] for g in groups}
        if named != self._announced:
            for name, members in named.items():
                p.event("group", f"{name}: {', '.join(members)} averaged (FedAvgM), one participant")
            self._announced = named
        return groups, alone

    def _group_round(
        self, record: RoundRecord, group: Group, instruction: RepresentInstruction
    ) -> dict[str, dict[str, torch.Tensor]]:
        """One group's round: its members train the group's weights (``train.weights``, with the
        round's regress settings), the coordinator averages them with momentum, and the group's
        model represents the round's mixed items; nothing when no member's weights came back."""
        p = self.pipeline
        assert p.exchange is not None and p.group_models is not None and instruction.mix is not None
        order = WeightsInstruction(run_id=p.run_id, round=record.round, settings=instruction.settings)
        with timed(record, "exchange"):
            reports, got = p.exchange.weights(list(group.members), order, p.group_models.current(group))
        record.sites += reports
        if not got:
            return {}
        trained = [got[n] for n in sorted(got)]
        p.group_models.update(group, [t.weights for t in trained], [t.examples for t in trained])
        with timed(record, "group-encode"):
            return {group.name: p.group_models.represent(group, instruction.mix)}


def unpaired_rows(public: Tensors, modalities: Sequence[str]) -> dict[str, list[int]]:
    """Per modality, the public rows that hold it but not every modality (the unpaired pool)."""
    complete = set(public.complete_rows(modalities).tolist())
    return {m: [i for i in public.rows_with(m).tolist() if i not in complete] for m in modalities}
