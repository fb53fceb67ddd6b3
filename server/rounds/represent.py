"""Representation exchange: one round of the ``cream`` family (and ``local``)."""

from __future__ import annotations

import torch

from mmfl.protocols.messages import RepresentInstruction
from mmfl.protocols.records import from_wire, to_wire
from mmfl.server.records import RoundRecord
from mmfl.server.rounds.context import RoundContext
from mmfl.server.rounds.timing import timed


class RepresentRound:
    """``site_work = "represent"`` (and ``"local"``): the server encodes this round's public rows
    (the global representations), the sampled sites train and reply with theirs, the method's
    rule merges them per modality and the server distils toward the result:
    :math:`\\hat v_m = \\sum_k w_{k,m} v_{k,m}` (the rule's weights), then ``kd_weight`` times
    the distillation loss toward :math:`\\hat v`. ``local``: the sites train alone."""

    def __init__(self, pipeline: RoundContext) -> None:
        self.pipeline = pipeline

    def run(self, record: RoundRecord) -> None:
        """Representation exchange (``local``: the sites train alone, nothing is asked back)."""
        p = self.pipeline
        assert p.exchange is not None
        exchanging = p.method.site_work == "represent"
        indices, rows = p.round_rows() if exchanging else ([], {})
        with timed(record, "encode"):
            wire = {
                m: to_wire(g.numpy(), p.cream.payload_dtype)
                for m, g in p.trainer.encode(p.data.public, rows).items()
            }
        instruction = RepresentInstruction(
            run_id=p.run_id,
            round=record.round,
            public_fingerprint=p.public_fingerprint,
            public_indices=indices,
            rows=rows,
            embed_dim=p.spec.embed_dim,
            settings=p.settings(),
        )
        accepted = p.exchange_represent(record, instruction, wire)
        if p.rule is None:
            p.enough(record, p.spec.server.min_sites)
            return
        p.merge_and_distil(
            record,
            {m: [reps[m] for reps in accepted.values() if m in reps] for m in p.spec.modalities},
            {m: torch.from_numpy(from_wire(a)) for m, a in wire.items()},  # as the sites saw them
            rows,
            enough=lambda: p.enough(record, p.spec.server.min_sites),
        )
