"""Featurized samples as tensors: inputs and a presence mask per modality, and class labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfl.data.features import Featurizer, featurize
from mmfl.data.sample import Sample


@dataclass
class Tensors:
    """Rows of samples: ``inputs[m]`` (N, *shape) with ``present[m]`` (N,) and ``labels`` (N,)
    holding class indices (-1 for an unlabeled row)."""

    inputs: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Sequence[int] | torch.Tensor) -> Tensors:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Tensors(
            {m: x[idx] for m, x in self.inputs.items()},
            {m: p[idx] for m, p in self.present.items()},
            self.labels[idx],
        )

    def rows_with(self, modality: str) -> torch.Tensor:
        """Indices of rows holding ``modality``."""
        return torch.nonzero(self.present[modality]).flatten()

    def complete_rows(self, modalities: Sequence[str]) -> torch.Tensor:
        """Indices of rows holding every one of ``modalities``."""
        mask = torch.ones(len(self), dtype=torch.bool)
        for m in modalities:
            mask &= self.present[m]
        return torch.nonzero(mask).flatten()


def concat(parts: Iterable[Tensors]) -> Tensors:
    """The rows of ``parts`` one after another (same modalities and input shapes)."""
    parts = list(parts)
    return Tensors(
        {m: torch.cat([p.inputs[m] for p in parts]) for m in parts[0].inputs},
        {m: torch.cat([p.present[m] for p in parts]) for m in parts[0].present},
        torch.cat([p.labels for p in parts]),
    )


def load_tensors(
    samples: Sequence[Sample],
    featurizers: Mapping[str, Featurizer],
    classes: Sequence[str],
    cache_root: Path | None,
    progress: bool = True,
) -> Tensors:
    """Featurize ``samples`` for each modality in ``featurizers`` (cached on disk)."""
    position = {c: i for i, c in enumerate(classes)}
    inputs, present = {}, {}
    for modality, feat in featurizers.items():
        values, mask = featurize(samples, feat, cache_root, progress)
        inputs[modality] = torch.from_numpy(np.ascontiguousarray(values))
        present[modality] = torch.from_numpy(mask)
    labels = torch.tensor([position.get(s.label, -1) if s.label is not None else -1 for s in samples])
    return Tensors(inputs, present, labels.to(torch.long))
