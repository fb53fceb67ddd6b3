"""Base strategy for representation exchange: sample sites, send instructions, check replies.

The ``arrays`` that flow through the Flower ``Strategy`` interface are the *global
representations* of this round's public rows, one array per modality; ``config`` carries the
:class:`~mmfl.protocols.messages.RepresentInstruction` as JSON. Subclasses decide how the valid
replies of one modality are combined (:meth:`RepresentationStrategy.combine`).

A reply that is an error, a refusal, or that fails validation (wrong shape, NaN, wrong row
count, unknown modality, too large) is dropped with its reason in :attr:`last_round`; the round
goes on with the others. A modality without contributors is skipped.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from mmfl.protocols.messages import (
    MSG_EVALUATE,
    MSG_REPRESENT,
    Capabilities,
    EvaluateInstruction,
    EvaluateReply,
    RepresentInstruction,
    RepresentReply,
)
from mmfl.protocols.records import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ProtocolError,
    arrays_of,
    check_representations,
    decode,
    encode,
    from_wire,
    payload_bytes,
)
from mmfl.strategies.ensemble import OtherModality


@dataclass
class SiteReport:
    """What one site did in one round, as the coordinator saw it."""

    site_id: str
    node_id: int
    accepted: bool
    reason: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    modalities: list[str] = field(default_factory=list)


@dataclass
class RoundReport:
    """The round's participation and the ensemble's diagnostics."""

    sites: list[SiteReport] = field(default_factory=list)
    weight_entropy: dict[str, float] = field(default_factory=dict)
    contributors: dict[str, int] = field(default_factory=dict)
    skipped_modalities: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[SiteReport]:
        return [s for s in self.sites if s.accepted]


class RepresentationStrategy(Strategy):
    """Sample registered sites, send global representations, validate and combine replies."""

    def __init__(
        self,
        modalities: Sequence[str],
        embed_dim: int,
        sites_per_round: int | None = None,
        seed: int = 0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        work_by_device: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.modalities = list(modalities)
        self.work_by_device = work_by_device or {}
        self.embed_dim = embed_dim
        self.sites_per_round = sites_per_round
        self.max_payload_bytes = max_payload_bytes
        self.sites: dict[int, Capabilities] = {}
        self.rng = random.Random(seed)
        self.last_round = RoundReport()
        self.last_evaluation: dict[str, dict[str, float]] = {}
        self._instruction: RepresentInstruction | None = None
        self._globals: dict[str, torch.Tensor] = {}
        self._sent: dict[str, int] = {}
        self._bytes_down: dict[int, int] = {}

    # -- site registry -------------------------------------------------------------------
    def register(self, node_id: int, capabilities: Capabilities) -> None:
        self.sites[node_id] = capabilities

    def site_id(self, node_id: int) -> str:
        caps = self.sites.get(node_id)
        return caps.site_id if caps else f"node-{node_id}"

    def select(self, grid: Grid, eligible: Iterable[int] | None = None) -> list[int]:
        """Registered and connected sites (optionally a subset), sampled uniformly."""
        online = set(grid.get_node_ids())
        pool = sorted(n for n in (eligible if eligible is not None else self.sites) if n in online)
        if self.sites_per_round is not None and self.sites_per_round < len(pool):
            pool = sorted(self.rng.sample(pool, self.sites_per_round))
        return pool

    # -- Strategy interface -----------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t%s(modalities=%s, dim=%d)", type(self).__name__, self.modalities, self.embed_dim)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        instruction = RepresentInstruction.model_validate_json(str(config["instruction"]))
        self._instruction = instruction
        self._globals = {m: torch.from_numpy(from_wire(a.numpy())) for m, a in arrays.items()}
        self._sent, self._bytes_down = {}, {}
        self.last_round = RoundReport()
        messages = []
        wire = {m: a.numpy() for m, a in arrays.items()}
        for node_id in self.select(grid):
            content = encode(self._scaled(instruction, self.sites[node_id]), wire)
            self._bytes_down[node_id] = payload_bytes(content)
            messages.append(Message(content, dst_node_id=node_id, message_type=MSG_REPRESENT))
        return messages

    def _scaled(self, instruction: RepresentInstruction, caps: Capabilities) -> RepresentInstruction:
        """The instruction with the site's work scaled to its declared device (e.g. more local
        epochs and larger batches on a GPU)."""
        work = self.work_by_device.get(caps.device.kind)
        if not work:
            return instruction
        return instruction.model_copy(update={"settings": instruction.settings.model_copy(update=work)})

    def remember_sent(self, messages: Iterable[Message]) -> None:
        """Map message ids to nodes (error replies from the SuperLink carry another src id)."""
        for m in messages:
            self._sent[m.metadata.message_id] = m.metadata.dst_node_id

    def _node_of(self, reply: Message) -> int:
        return self._sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._instruction is not None, "configure_train must run first"
        instruction = self._instruction
        self.last_round = RoundReport()
        accepted: dict[int, dict[str, torch.Tensor]] = {}
        for reply in replies:
            node_id = self._node_of(reply)
            report = SiteReport(
                self.site_id(node_id), node_id, False, bytes_down=self._bytes_down.get(node_id, 0)
            )
            self.last_round.sites.append(report)
            if reply.has_error():
                report.reason = f"error reply: {reply.error.reason}"
                continue
            report.bytes_up = payload_bytes(reply.content)
            try:
                reps = self._check_reply(node_id, reply, instruction)
            except ProtocolError as exc:
                report.reason = str(exc)
                continue
            meta = decode(reply.content, RepresentReply)
            report.metrics, report.epsilon = (
                meta.metrics,
                meta.privacy.epsilon_spent if meta.privacy.enabled else None,
            )
            report.accepted, report.modalities = True, sorted(reps)
            accepted[node_id] = reps
        for r in self.last_round.sites:
            if not r.accepted:
                log(WARNING, "round %d: dropped reply of %s: %s", server_round, r.site_id, r.reason)

        out = ArrayRecord()
        for modality in self.modalities:
            contributions = [reps[modality] for reps in accepted.values() if modality in reps]
            self.last_round.contributors[modality] = len(contributions)
            if not contributions:
                self.last_round.skipped_modalities.append(modality)
                log(INFO, "round %d: no site sent %s representations; skipped", server_round, modality)
                continue
            combined = self.combine(modality, contributions, self._others(modality, instruction))
            out[modality] = Array(combined.numpy().astype(np.float32))
        metrics = MetricRecord(
            {
                "sites-accepted": len(accepted),
                "sites-dropped": len(self.last_round.sites) - len(accepted),
                **{f"weight-entropy-{m}": v for m, v in self.last_round.weight_entropy.items()},
            }
        )
        return (out if len(out) else None), metrics

    def _check_reply(
        self, node_id: int, reply: Message, instruction: RepresentInstruction
    ) -> dict[str, torch.Tensor]:
        if node_id not in self.sites:
            raise ProtocolError("reply from a site that is not registered")
        meta = decode(reply.content, RepresentReply)
        if meta.status != "ok":
            raise ProtocolError(f"site refused the round: {meta.reason}")
        if meta.round != instruction.round:
            raise ProtocolError(f"reply for round {meta.round}, expected {instruction.round}")
        arrays = arrays_of(reply.content)
        declared = set(self.sites[node_id].modalities) & set(self.modalities)
        check_representations(
            arrays,
            {m: len(instruction.rows.get(m, [])) for m in self.modalities},
            declared,
            instruction.embed_dim,
            self.max_payload_bytes,
        )
        return {m: torch.from_numpy(from_wire(a)) for m, a in arrays.items()}

    def _others(self, modality: str, instruction: RepresentInstruction) -> list[OtherModality]:
        """For each other modality with global representations: where modality's rows sit."""
        rows = instruction.rows[modality]
        others = []
        for other in self.modalities:
            if other == modality or other not in self._globals:
                continue
            where = {r: i for i, r in enumerate(instruction.rows[other])}
            position = torch.tensor([where.get(r, -1) for r in rows], dtype=torch.long)
            others.append(OtherModality(self._globals[other], position))
        return others

    @abstractmethod
    def combine(
        self, modality: str, contributions: list[torch.Tensor], others: list[OtherModality]
    ) -> torch.Tensor:
        """Merge the contributors' (n, d) representations of one modality into one (n, d)."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        run_id = str(config["run-id"])
        online = set(grid.get_node_ids())
        content = encode(EvaluateInstruction(run_id=run_id, round=server_round))
        return [
            Message(content, dst_node_id=n, message_type=MSG_EVALUATE)
            for n in sorted(self.sites)
            if n in online
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.last_evaluation = {}
        flat: dict[str, float] = {}
        for reply in replies:
            if reply.has_error():
                continue
            try:
                meta = decode(reply.content, EvaluateReply)
            except ProtocolError:
                continue
            self.last_evaluation[meta.site_id] = meta.metrics
            flat.update({f"{meta.site_id}/{k}": float(v) for k, v in meta.metrics.items()})
        return MetricRecord(flat) if flat else None
