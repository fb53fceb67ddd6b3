"""The rule that merges one round's representations: per modality, the contributors' arrays
in, one array out. Pure tensor math: no messages, no I/O (the coordinator's exchange in
:mod:`mmfl.server.exchange` collects and checks the replies first)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mmfl.protocols.messages import positions
from mmfl.strategies.defences import cap_weights, trim_far
from mmfl.strategies.ensemble import OtherModality, weight_entropy, weighted_sum


@dataclass
class Aggregate:
    """One round's merged representations and the ensemble's diagnostics.

    ``targets[m]`` holds one row per entry of the round's ``rows[m]``; a modality no site sent
    is absent from ``targets`` and listed in ``skipped``.
    """

    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_entropy: dict[str, float] = field(default_factory=dict)
    contributors: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class EnsembleRule(ABC):
    r"""Per row j of modality m, a weighted sum over contributors k:
    :math:`\hat v_j = \sum_k \alpha_j^k v_j^k` with :math:`\sum_k \alpha_j^k = 1`.
    Subclasses choose the weights (:meth:`weights`); :meth:`defended` trims and caps them
    (:mod:`mmfl.strategies.defences`)."""

    trim: int = 0
    max_site_weight: float = 1.0

    def defended(self, trim: int = 0, max_site_weight: float = 1.0) -> EnsembleRule:
        """This rule with the per-sample trim and the per-site weight cap turned on."""
        self.trim, self.max_site_weight = trim, max_site_weight
        return self

    @abstractmethod
    def weights(self, contributions: Sequence[torch.Tensor], others: Sequence[OtherModality]) -> torch.Tensor:
        """(K, n) weights of the K contributors' (n, d) representations of one modality."""

    def aggregate(
        self,
        contributions: Mapping[str, Sequence[torch.Tensor]],
        globals_: Mapping[str, torch.Tensor],
        rows: Mapping[str, Sequence[int]],
    ) -> Aggregate:
        """Merge each modality's contributions; ``globals_[o]`` are the representations the
        sites were sent for ``rows[o]`` (the scores' reference for the other modalities)."""
        out = Aggregate()
        for modality, local in contributions.items():
            out.contributors[modality] = len(local)
            if not local:
                out.skipped.append(modality)
                continue
            w = self.weights(local, others(modality, globals_, rows))
            w = cap_weights(trim_far(local, w, self.trim), self.max_site_weight)
            out.weight_entropy[modality] = weight_entropy(w)
            out.targets[modality] = weighted_sum(local, w)
        return out


def others(
    modality: str, globals_: Mapping[str, torch.Tensor], rows: Mapping[str, Sequence[int]]
) -> list[OtherModality]:
    """For each other modality with global representations: where ``modality``'s rows sit."""
    out = []
    for other, reps in globals_.items():
        if other == modality:
            continue
        position = torch.tensor(positions(list(rows[other]), list(rows[modality])), dtype=torch.long)
        out.append(OtherModality(reps, position))
    return out
