"""The coordinator's side of the wire: send instructions, collect replies, check them once.

Each array crosses once in each direction: global representations are cast to the wire dtype
when encoded (:func:`~mmfl.protocols.records.to_wire`), and a reply's arrays are checked by the
same function a site uses on instructions (:mod:`mmfl.protocols.records`) and cast back to
float32 (:func:`~mmfl.protocols.records.from_wire`). A reply that is an error, a refusal, late
or invalid becomes a :class:`~mmfl.server.records.SiteReport` with its reason and is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from mmfl.protocols.messages import (
    MSG_EVALUATE,
    MSG_RELEASE,
    MSG_REPRESENT,
    MSG_WEIGHTS,
    Capabilities,
    EvaluateInstruction,
    EvaluateReply,
    PrivacyStatus,
    ReleaseInstruction,
    ReleaseReply,
    RepresentInstruction,
    RepresentReply,
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ProtocolError,
    arrays_of,
    check_representations,
    check_weights,
    decode,
    encode,
    from_wire,
    payload_bytes,
)
from mmfl.server.records import SiteReport
from mmfl.server.sites import SiteRegistry
from mmfl.server.transport import send_and_collect
from mmfl.strategies.fedavg import WEIGHT_KEY

Answer = TypeVar("Answer", RepresentReply, WeightsReply)


def _answer(
    reply: Message | None, report: SiteReport, kind: type[Answer], round_: int, timeout: float
) -> tuple[RecordDict | None, Answer | None]:
    """The reply's content and message when it answers round ``round_`` with ``ok``; else
    (None, the message if it decoded) with the report refused and its reason set."""
    if reply is None:
        report.refuse(f"no reply within {timeout:g} s")
        return None, None
    if reply.has_error():
        report.refuse(f"error reply: {reply.error.reason}")
        return None, None
    report.bytes_up = payload_bytes(reply.content)
    try:
        meta = decode(reply.content, kind)
    except ProtocolError as exc:
        report.refuse(str(exc))
        return None, None
    if meta.status != "ok":
        report.refuse(f"site refused the round: {meta.reason}")
        return None, meta
    if meta.round != round_:
        report.refuse(f"reply for round {meta.round}, expected {round_}")
        return None, meta
    return reply.content, meta


def read_represent_reply(
    reply: Message | None,
    report: SiteReport,
    caps: Capabilities,
    instruction: RepresentInstruction,
    timeout: float = 0.0,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    unit_norm_tolerance: float | None = None,
) -> tuple[dict[str, torch.Tensor] | None, PrivacyStatus | None]:
    """Check a ``train.represent`` reply against what was asked; the site's representations
    (float32, in ``instruction.rows`` order) and its privacy status, or (None, status) with the
    report refused. With ``unit_norm_tolerance``, every row must be a unit vector within it
    (sites' encoders normalise; scaled vectors would outweigh every other site in the sum)."""
    content, meta = _answer(reply, report, RepresentReply, instruction.round, timeout)
    privacy = meta.privacy if meta is not None else None
    if content is None or meta is None:
        return None, privacy
    arrays = arrays_of(content)
    try:
        check_representations(
            arrays,
            instruction.expected_rows(),
            instruction.embed_dim,
            allowed=set(caps.modalities) & set(instruction.expected_rows()),
            max_bytes=max_bytes,
        )
    except ProtocolError as exc:
        report.refuse(str(exc))
        return None, privacy
    reps = {m: torch.from_numpy(from_wire(a)) for m, a in arrays.items()}
    if unit_norm_tolerance is not None:
        for m, r in reps.items():
            norms = r.norm(dim=1)
            if len(norms) and float((norms - 1).abs().max()) > unit_norm_tolerance:
                report.refuse(
                    f"{m}: row norms {float(norms.min()):.3g} to {float(norms.max()):.3g}, expected unit "
                    f"vectors (within {unit_norm_tolerance:g})"
                )
                return None, privacy
    report.accepted, report.metrics, report.modalities = True, meta.metrics, sorted(arrays)
    report.epsilon = meta.privacy.epsilon_spent if meta.privacy.enabled else None
    return reps, privacy


@dataclass
class ReleasedModel:
    """A site's final model as released at the end of a run (weights checked)."""

    site_id: str
    architectures: dict[str, str]
    weights: dict[str, np.ndarray]
    round: int
    privacy: PrivacyStatus


@dataclass
class WeightsContribution:
    weights: dict[str, np.ndarray]
    examples: float


def read_weights_reply(
    reply: Message | None,
    report: SiteReport,
    instruction: WeightsInstruction,
    reference: Mapping[str, tuple[int, ...]],
    timeout: float = 0.0,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> tuple[WeightsContribution | None, PrivacyStatus | None]:
    """Check a ``train.weights`` reply: the site's weights (the global model's keys and
    shapes) and the number of examples to weight them by."""
    content, meta = _answer(reply, report, WeightsReply, instruction.round, timeout)
    privacy = meta.privacy if meta is not None else None
    if content is None or meta is None:
        return None, privacy
    arrays = arrays_of(content)
    counts = content.metric_records.get("metrics")
    examples = float(counts[WEIGHT_KEY]) if counts is not None and WEIGHT_KEY in counts else 0.0
    try:
        check_weights(arrays, reference, max_bytes)
        if not examples > 0:
            raise ProtocolError(f"no positive {WEIGHT_KEY} to weight the average by")
    except ProtocolError as exc:
        report.refuse(str(exc))
        return None, privacy
    report.accepted, report.metrics = True, meta.metrics
    report.epsilon = meta.privacy.epsilon_spent if meta.privacy.enabled else None
    return WeightsContribution(arrays, examples), privacy


class SiteExchange:
    """Round trips with the registered sites over a Flower ``Grid``."""

    def __init__(
        self,
        grid: Grid,
        registry: SiteRegistry,
        timeout: float,
        work_by_device: Mapping[str, Mapping[str, int]] | None = None,
        max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        on_progress: Callable[[int, int, int], None] | None = None,
        unit_norm_tolerance: float | None = None,
    ) -> None:
        self.grid = grid
        self.registry = registry
        self.timeout = timeout
        self.work_by_device = dict(work_by_device or {})
        self.max_bytes = max_bytes
        self.on_progress = on_progress
        self.unit_norm_tolerance = unit_norm_tolerance

    def _round_trip(
        self, round_: int, contents: Mapping[int, RecordDict], message_type: str
    ) -> tuple[dict[int, Message | None], dict[int, SiteReport]]:
        progress = self.on_progress
        replies = send_and_collect(
            self.grid,
            contents,
            message_type,
            str(round_),
            self.timeout,
            (lambda done, total: progress(round_, done, total)) if progress else None,
        )
        reports = {
            n: SiteReport(site_id=self.registry.site_id(n), node_id=n, bytes_down=payload_bytes(c))
            for n, c in contents.items()
        }
        return replies, reports

    def _scaled(self, instruction: RepresentInstruction, caps: Capabilities) -> RepresentInstruction:
        """The instruction with the site's work scaled to its declared device (e.g. more local
        epochs and larger batches on a GPU)."""
        work = self.work_by_device.get(caps.device.kind)
        if not work:
            return instruction
        return instruction.model_copy(update={"settings": instruction.settings.model_copy(update=dict(work))})

    def _credible(self, node: int, privacy: PrivacyStatus | None, report: SiteReport, round_: int) -> bool:
        """Keep the site's privacy status unless its spend went back (then refuse the reply)."""
        problem = self.registry.check_spend(node, privacy, f"in round {round_}")
        if problem is not None:
            report.refuse(problem)
            return False
        self.registry.update_privacy(node, privacy)
        return True

    def represent(
        self, nodes: Sequence[int], instruction: RepresentInstruction, globals_wire: Mapping[str, np.ndarray]
    ) -> tuple[list[SiteReport], dict[int, dict[str, torch.Tensor]]]:
        """One ``train.represent`` round trip; the reports (in node order) and the accepted
        sites' representations by node."""
        contents = {n: encode(self._scaled(instruction, self.registry.sites[n]), globals_wire) for n in nodes}
        replies, reports = self._round_trip(instruction.round, contents, MSG_REPRESENT)
        accepted = {}
        for n in nodes:
            reps, privacy = read_represent_reply(
                replies[n],
                reports[n],
                self.registry.sites[n],
                instruction,
                self.timeout,
                self.max_bytes,
                self.unit_norm_tolerance,
            )
            if self._credible(n, privacy, reports[n], instruction.round) and reps is not None:
                accepted[n] = reps
        return [reports[n] for n in nodes], accepted

    def weights(
        self, nodes: Sequence[int], instruction: WeightsInstruction, weights: Mapping[str, np.ndarray]
    ) -> tuple[list[SiteReport], dict[int, WeightsContribution]]:
        """One ``train.weights`` round trip: the global weights out, the sites' weights back."""
        contents = {n: encode(instruction, weights) for n in nodes}
        replies, reports = self._round_trip(instruction.round, contents, MSG_WEIGHTS)
        reference = {k: tuple(v.shape) for k, v in weights.items()}
        accepted = {}
        for n in nodes:
            got, privacy = read_weights_reply(
                replies[n], reports[n], instruction, reference, self.timeout, self.max_bytes
            )
            if self._credible(n, privacy, reports[n], instruction.round) and got is not None:
                accepted[n] = got
        return [reports[n] for n in nodes], accepted

    def release(
        self,
        nodes: Sequence[int],
        instruction: ReleaseInstruction,
        reference: Callable[[Capabilities], Mapping[str, tuple[int, ...]]],
    ) -> tuple[list[SiteReport], dict[int, ReleasedModel]]:
        """The ``query.release`` round trip: each consenting site's final model, its weights
        checked against ``reference(caps)`` (the keys and shapes of the architectures it
        declared); refusals and bad replies become reports with the reason."""
        contents = {n: encode(instruction) for n in nodes}
        replies, reports = self._round_trip(instruction.round, contents, MSG_RELEASE)
        released: dict[int, ReleasedModel] = {}
        for n in nodes:
            reply, report, caps = replies[n], reports[n], self.registry.sites[n]
            if reply is None or reply.has_error():
                report.refuse("no reply" if reply is None else f"error reply: {reply.error.reason}")
                continue
            report.bytes_up = payload_bytes(reply.content)
            try:
                meta = decode(reply.content, ReleaseReply)
                if meta.status != "ok":
                    raise ProtocolError(f"site refused the release: {meta.reason}")
                if meta.architectures != caps.architectures:
                    raise ProtocolError(
                        f"released architectures {meta.architectures} differ from the declared {caps.architectures}"
                    )
                arrays = arrays_of(reply.content)
                check_weights(arrays, reference(caps), self.max_bytes)
            except ProtocolError as exc:
                report.refuse(str(exc))
                continue
            if not self._credible(n, meta.privacy, report, instruction.round):
                continue
            report.accepted, report.modalities = True, sorted(caps.modalities)
            report.epsilon = meta.privacy.epsilon_spent if meta.privacy.enabled else None
            released[n] = ReleasedModel(
                caps.site_id, dict(meta.architectures), arrays, meta.round, meta.privacy
            )
        return [reports[n] for n in nodes], released

    def evaluate(self, nodes: Sequence[int], run_id: str, round_: int) -> dict[str, dict[str, float]]:
        """Each site's metrics on its held-out rows (sites that fail are left out)."""
        contents = {n: encode(EvaluateInstruction(run_id=run_id, round=round_)) for n in nodes}
        replies, _ = self._round_trip(round_, contents, MSG_EVALUATE)
        out: dict[str, dict[str, float]] = {}
        for reply in replies.values():
            if reply is None or reply.has_error():
                continue
            try:
                meta = decode(reply.content, EvaluateReply)
            except ProtocolError:
                continue
            out[meta.site_id] = meta.metrics
        return out
