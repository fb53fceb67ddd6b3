"""Weight averaging: one round of the FedAvg family."""

from __future__ import annotations

import numpy as np
import torch

from mmfl.protocols.messages import WeightsInstruction
from mmfl.server.records import RoundRecord
from mmfl.server.rounds.context import RoundContext
from mmfl.server.rounds.timing import timed
from mmfl.strategies.fedavg import momentum_step, weighted_average


class WeightsRound:
    """``site_work = "weights"`` (the FedAvg family): the global weights out, the sites' trained
    copies back, :math:`\\bar w = \\sum_k n_k w_k / \\sum_k n_k` (with ``public_participant`` the
    coordinator's copy trained on the public set is one more :math:`k`), then FedAvgM's
    :math:`v \\leftarrow \\beta v + (\\bar w - w)`, :math:`w \\leftarrow w + \\eta v`."""

    def __init__(self, pipeline: RoundContext) -> None:
        self.pipeline = pipeline

    def run(self, record: RoundRecord) -> None:
        p = self.pipeline
        assert p.exchange is not None
        state = {k: v.detach().cpu().numpy().copy() for k, v in p.trainer.model.state_dict().items()}
        instruction = WeightsInstruction(run_id=p.run_id, round=record.round, settings=p.settings())
        nodes = p.exchange.registry.online(p.exchange.grid)
        with timed(record, "exchange"):
            record.sites, accepted = p.exchange.weights(nodes, instruction, state)
        if not p.enough(record, max(1, p.spec.server.min_sites)):
            return
        got = [accepted[n] for n in sorted(accepted)]
        weights, examples = [g.weights for g in got], [g.examples for g in got]
        if p.fedavg.public_participant:
            losses = [
                p.trainer.train_epoch(p.data.public, p.rng) for _ in range(p.spec.server.epochs_per_round)
            ]
            record.server.train_loss = losses[-1]
            weights.insert(0, {k: v.detach().cpu().numpy() for k, v in p.trainer.model.state_dict().items()})
            examples.insert(0, len(p.data.public))
        averaged = weighted_average(weights, examples)
        if p.fedavg.server_momentum > 0 or p.fedavg.server_lr != 1.0:
            averaged, p.trainer.velocity = momentum_step(
                state, averaged, p.trainer.velocity, p.fedavg.server_momentum, p.fedavg.server_lr
            )
        device = p.trainer.device
        p.trainer.model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in averaged.items()}
        )
