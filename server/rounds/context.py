"""What a kind of round reads from the pipeline that runs it (kept apart, so that the round
classes do not import the pipeline that imports them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from mmfl.config import CreamConfig, FedAvgConfig, FederationSpec
from mmfl.protocols.messages import RepresentInstruction, TrainSettings
from mmfl.server.data import ServerData
from mmfl.server.exchange import SiteExchange
from mmfl.server.groups import GroupModels
from mmfl.server.model import ServerTrainer
from mmfl.server.records import RoundRecord
from mmfl.server.sites import SiteSampler
from mmfl.strategies.methods import Method
from mmfl.strategies.rule import EnsembleRule


class RoundContext(Protocol):
    """The run's state and the shared steps of a round (:class:`~.pipeline.RoundPipeline`)."""

    run_id: str
    spec: FederationSpec
    method: Method
    cream: CreamConfig
    fedavg: FedAvgConfig
    rule: EnsembleRule | None
    trainer: ServerTrainer
    data: ServerData
    public_fingerprint: str
    rng: np.random.Generator
    sampler: SiteSampler
    exchange: SiteExchange | None
    event: Callable[[str, str], None]
    group_models: GroupModels | None

    def settings(self) -> TrainSettings: ...

    def round_rows(self) -> tuple[list[int], dict[str, list[int]]]: ...

    def enough(self, record: RoundRecord, minimum: int) -> bool: ...

    def exchange_represent(
        self, record: RoundRecord, instruction: RepresentInstruction, wire: dict[str, np.ndarray]
    ) -> dict[int, dict[str, torch.Tensor]]: ...

    def merge_and_distil(
        self,
        record: RoundRecord,
        contributions: dict[str, list[torch.Tensor]],
        sent: dict[str, torch.Tensor],
        rows: dict[str, list[int]],
        enough: Callable[[], bool],
    ) -> None: ...
