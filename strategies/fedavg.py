"""Baseline: Flower's FedAvg over the paired sites that share one architecture."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from mmfl.protocols.messages import MSG_WEIGHTS, WeightsInstruction, WeightsReply
from mmfl.protocols.records import ProtocolError, decode, encode, payload_bytes
from mmfl.strategies.representation import RoundReport, SiteReport


class PairedFedAvg(FedAvg):
    r"""Weights, not representations: :math:`w = \sum_k n_k w_k / \sum_k n_k` over the paired
    sites' models (Flower's ``FedAvg.aggregate_train``), weighted by their training rows.

    Only the given ``nodes`` take part (paired sites with identical architectures); a refused
    or failed reply is left out of the average and recorded in :attr:`last_round`.
    """

    def __init__(self, nodes: dict[int, str]) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.nodes = dict(nodes)  # node id -> site id
        self.last_round = RoundReport()
        self._sent: dict[str, int] = {}
        self._bytes_down: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        instruction = WeightsInstruction.model_validate_json(str(config["instruction"]))
        online = set(grid.get_node_ids())
        wire = {k: a.numpy() for k, a in arrays.items()}
        messages = []
        self._bytes_down = {}
        for node in sorted(n for n in self.nodes if n in online):
            content = encode(instruction, wire)
            self._bytes_down[node] = payload_bytes(content)
            messages.append(Message(content, dst_node_id=node, message_type=MSG_WEIGHTS))
        return messages

    def remember_sent(self, messages: Sequence[Message]) -> None:
        self._sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.last_round = RoundReport()
        valid = []
        for reply in replies:
            node = self._sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            report = SiteReport(
                self.nodes.get(node, f"node-{node}"), node, False, bytes_down=self._bytes_down.get(node, 0)
            )
            self.last_round.sites.append(report)
            if reply.has_error():
                report.reason = f"error reply: {reply.error.reason}"
                continue
            report.bytes_up = payload_bytes(reply.content)
            try:
                meta = decode(reply.content, WeightsReply)
            except ProtocolError as exc:
                report.reason = str(exc)
                continue
            if meta.status != "ok":
                report.reason = f"site refused the round: {meta.reason}"
                continue
            report.accepted, report.metrics = True, meta.metrics
            report.epsilon = meta.privacy.epsilon_spent if meta.privacy.enabled else None
            valid.append(reply)
        if not valid:
            return None, None
        return super().aggregate_train(server_round, valid)
