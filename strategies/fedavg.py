"""Baselines: FedAvg of the paired sites' weights (Flower's weighted average) and FedAvgM's
server momentum step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from mmfl.flower_internals import aggregate_arrayrecords

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


def momentum_step(
    current: Mapping[str, np.ndarray],
    averaged: Mapping[str, np.ndarray],
    velocity: Mapping[str, np.ndarray] | None,
    beta: float,
    lr: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    r"""FedAvgM (Hsu et al. 2019; Flower's ``FedAvgM``): with the pseudo-gradient
    :math:`\Delta = \bar w - w`, :math:`v \leftarrow \beta v + \Delta` (:math:`v = \Delta` in the first
    round) and :math:`w \leftarrow w + \eta v`. Returns the new weights and velocity. Integer
    buffers (none in mmfl's models today) take the average as it is."""
    new_w: dict[str, np.ndarray] = {}
    new_v: dict[str, np.ndarray] = {}
    for k, w in current.items():
        avg = np.asarray(averaged[k])
        if not np.issubdtype(avg.dtype, np.floating):
            new_w[k] = avg
            continue
        delta = avg - np.asarray(w)
        v = delta if velocity is None or k not in velocity else beta * np.asarray(velocity[k]) + delta
        new_v[k] = v
        new_w[k] = (np.asarray(w) + lr * v).astype(avg.dtype)
    return new_w, new_v
