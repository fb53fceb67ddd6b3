"""The ``site-free`` control's round: the server distils toward its own representations."""

from __future__ import annotations

import torch

from mmfl.protocols.records import from_wire, to_wire
from mmfl.server.records import RoundRecord
from mmfl.server.rounds.context import RoundContext


class SiteFreeRound:
    """``self_targets`` (the ``site-free`` control): the server's own representations of the
    round's public rows, as sites would receive them, are the one contribution the rule merges;
    the server distils toward the result. No site is contacted."""

    def __init__(self, pipeline: RoundContext) -> None:
        self.pipeline = pipeline

    def run(self, record: RoundRecord) -> None:
        p = self.pipeline
        assert p.rule is not None
        _, rows = p.round_rows()
        sent = {
            m: torch.from_numpy(from_wire(to_wire(g.numpy(), p.cream.payload_dtype)))
            for m, g in p.trainer.encode(p.data.public, rows).items()
        }
        p.merge_and_distil(record, {m: [g] for m, g in sent.items()}, sent, rows, enough=lambda: True)
