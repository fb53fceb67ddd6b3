"""Baseline: FedAvg of the paired sites' weights (Flower's weighted average)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

WEIGHT_KEY = "num-examples"


def weighted_average(
    weights: Sequence[Mapping[str, np.ndarray]], examples: Sequence[float]
) -> dict[str, np.ndarray]:
    r"""Weights, not representations: :math:`w = \sum_k n_k w_k / \sum_k n_k` over the sites'
    models, in the given order (Flower's ``aggregate_arrayrecords``, the math of its FedAvg).
    ``examples[k]`` is what site k reported as ``num-examples`` (a DP site's noisy count)."""
    if not weights:
        raise ValueError("nothing to average")
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in w.items()}),
                "metrics": MetricRecord({WEIGHT_KEY: float(n)}),
            }
        )
        for w, n in zip(weights, examples, strict=True)
    ]
    return {k: a.numpy() for k, a in aggregate_arrayrecords(records, WEIGHT_KEY).items()}
