"""Retrieval and classification metrics.

Retrieval between two modalities a -> b ranks every candidate of b by dot product with the
query of a. A hit at K means a right answer is among the top K: on instance-paired data the
paired item; on class-paired data any item of the same class. R@K is in percent;
``rsum = R@1 + R@5 + R@10`` in both directions (at most 600).

On class-paired data (digits: ten distinct words) R@K saturates and image->text R@1 = R@5 =
R@10 by construction, so the metrics also hold the mean average precision over the same-class
items, ``map`` (the mean of both directions, in percent), which keeps separating models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

KS = (1, 5, 10)


@torch.no_grad()
def recall_at_k(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    query_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    by_class: bool,
    ks: tuple[int, ...] = KS,
    chunk: int = 1024,
) -> dict[int, float]:
    """Percent of queries with a right answer in the top K, computed ``chunk`` queries at a time.

    On instance-paired data query i's right answer is candidate i.
    """
    n = len(queries)
    hits = {k: 0 for k in ks}
    kmax = min(max(ks), len(candidates))
    for start in range(0, n, chunk):
        q = queries[start : start + chunk]
        top = (q @ candidates.T).topk(kmax, dim=1).indices  # (b, kmax)
        if by_class:
            right = candidate_labels[top] == query_labels[start : start + chunk, None]
        else:
            right = top == torch.arange(start, start + len(q), device=top.device)[:, None]
        for k in ks:
            hits[k] += int(right[:, :k].any(1).sum())
    return {k: 100.0 * hits[k] / n for k in ks}


@torch.no_grad()
def mean_average_precision(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    query_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    chunk: int = 512,
) -> float:
    """Mean over queries of the average precision of the ranking of every candidate, the
    same-class candidates being the relevant ones (in percent; queries with none are skipped).

    AP = (1 / R) * sum over relevant candidates at rank k of (relevant in the top k) / k.
    """
    total, counted = 0.0, 0
    for start in range(0, len(queries), chunk):
        order = (queries[start : start + chunk] @ candidates.T).argsort(dim=1, descending=True)
        relevant = (candidate_labels[order] == query_labels[start : start + chunk, None]).float()
        hits = relevant.cumsum(1)
        ranks = torch.arange(1, relevant.shape[1] + 1, device=relevant.device)
        n_rel = relevant.sum(1)
        ap = (relevant * hits / ranks).sum(1) / n_rel.clamp(min=1)
        keep = n_rel > 0
        total += float(ap[keep].sum())
        counted += int(keep.sum())
    return 100.0 * total / max(counted, 1)


def retrieval_metrics(
    za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor, by_class: bool, names: tuple[str, str]
) -> dict[str, float]:
    """R@1/5/10 both ways and rsum for aligned rows ``za[i] <-> zb[i]`` (same sample)."""
    a, b = names
    ab = recall_at_k(za, zb, labels, labels, by_class)
    ba = recall_at_k(zb, za, labels, labels, by_class)
    out = {f"{a}2{b}_r{k}": v for k, v in ab.items()}
    out.update({f"{b}2{a}_r{k}": v for k, v in ba.items()})
    out["rsum"] = sum(ab.values()) + sum(ba.values())
    if by_class:
        out[f"{a}2{b}_map"] = mean_average_precision(za, zb, labels, labels)
        out[f"{b}2{a}_map"] = mean_average_precision(zb, za, labels, labels)
        out["map"] = (out[f"{a}2{b}_map"] + out[f"{b}2{a}_map"]) / 2
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of labeled rows (label >= 0) whose arg-max is right."""
    mask = labels >= 0
    if not mask.any():
        return float("nan")
    return 100.0 * float((logits[mask].argmax(1) == labels[mask]).float().mean())


def pairwise_retrieval(
    encode: Callable[[str, torch.Tensor], torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    present: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    pairs: Sequence[tuple[str, str]],
    by_class: bool,
) -> dict[str, float]:
    """:func:`retrieval_metrics` for each modality pair over the rows holding both, keyed
    ``a-b/<metric>``; the first pair's also appear unprefixed (``rsum``, ...)."""
    out: dict[str, float] = {}
    for i, (a, b) in enumerate(pairs):
        rows = torch.nonzero(present[a] & present[b]).flatten()
        if len(rows) < 2:
            continue
        metrics = retrieval_metrics(
            encode(a, inputs[a][rows]), encode(b, inputs[b][rows]), labels[rows], by_class, (a, b)
        )
        if i == 0:
            out.update(metrics)
        out.update({f"{a}-{b}/{k}": v for k, v in metrics.items()})
    return out
