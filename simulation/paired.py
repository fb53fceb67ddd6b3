"""Paired comparison of two methods run on the same seeds.

Seed s fixes the data partition, the initialisations and the batch order for every method, so
the honest comparison is the per-seed difference ``d_s = treated_s - control_s``. Over the n
seeds both hold:

.. math::

    \\bar d = \\frac{1}{n}\\sum_s d_s, \\quad
    s_d = \\sqrt{\\tfrac{1}{n-1}\\sum_s (d_s - \\bar d)^2}, \\quad
    \\bar d \\pm t_{0.975,\\,n-1}\\, s_d / \\sqrt{n}

(Student's t interval; ``s_d`` is the sample standard deviation, ddof 1). The share of a gap
closed is ``(treated - control) / (ceiling - control)`` on the means. ``mmfl simulate compare``
and ``benchmarks/quality/quality.py`` compare every federation with every site-free run this way
(:func:`paired_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel


class PairedDifference(BaseModel):
    """``treated - control`` over the seeds both ran."""

    treated: str
    control: str
    seeds: list[int]
    per_seed: list[float]
    mean: float
    sd: float | None
    """Sample standard deviation of the differences (None with one seed)."""
    ci_low: float | None
    ci_high: float | None

    @property
    def significant(self) -> bool:
        """Whether the 95 % interval lies above zero."""
        return self.ci_low is not None and self.ci_low > 0


def sample_std(values: list[float]) -> float | None:
    """Standard deviation with ddof 1; None for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def paired_difference(
    treated: str, control: str, treated_by_seed: Mapping[int, float], control_by_seed: Mapping[int, float]
) -> PairedDifference:
    """The paired difference and its 95 % t interval over the seeds both mappings hold."""
    from scipy import stats  # not on the command line's start path

    seeds = sorted(set(treated_by_seed) & set(control_by_seed))
    if not seeds:
        raise ValueError(f"{treated} and {control} share no seed")
    d = [float(treated_by_seed[s] - control_by_seed[s]) for s in seeds]
    mean = float(np.mean(d))
    sd = sample_std(d)
    if sd is None:
        low = high = None
    else:
        half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / np.sqrt(len(d))
        low, high = mean - half, mean + half
    return PairedDifference(
        treated=treated, control=control, seeds=seeds, per_seed=d, mean=mean, sd=sd, ci_low=low, ci_high=high
    )


def gap_closed(treated: float, control: float, ceiling: float) -> float | None:
    """Share of the control-to-ceiling gap the treated method closes (None without a gap)."""
    gap = ceiling - control
    return None if gap <= 0 else (treated - control) / gap


def _by_seed(
    summaries: Sequence[Mapping[str, Any]], strategy: str, key: str = "retrieval"
) -> dict[int, float]:
    return {
        s["seed"]: s["final"][key]["rsum"]
        for s in summaries
        if s["strategy"] == strategy and (s["final"].get(key) or {}).get("rsum") is not None
    }


def _mean(values: Mapping[int, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None


def paired_rows(
    summaries: Sequence[Mapping[str, Any]],
    site_free: Callable[[str], bool],
    compared: Callable[[str], bool],
    ceiling: str = "centralized",
) -> list[dict[str, Any]]:
    """Each compared run (``compared(name)``: a federation with a server model) against every
    site-free run (``site_free(name)``: a server the coordinator could build without any site)
    and marked against the strongest of those by mean **val** rsum: the paired difference of
    the test rsum after the last round, its interval, and the share of the control-to-``ceiling``
    gap it closes (None without the ceiling run or without a gap)."""
    ran = list(dict.fromkeys(s["strategy"] for s in summaries))
    controls = [c for c in ran if site_free(c)]
    ceiling_mean = _mean(_by_seed(summaries, ceiling))
    rows: list[dict[str, Any]] = []
    if not controls:
        return rows
    strongest = max(controls, key=lambda c: _mean(_by_seed(summaries, c, "val_retrieval")) or -1.0)
    for name in sorted(n for n in ran if not site_free(n) and compared(n)):
        treated = _by_seed(summaries, name)
        for control in sorted(controls):
            held = _by_seed(summaries, control)
            if not treated or not set(treated) & set(held):
                continue
            diff = paired_difference(name, control, treated, held)
            treated_mean, control_mean = _mean(treated), _mean(held)
            closed = (
                None
                if ceiling_mean is None or treated_mean is None or control_mean is None
                else gap_closed(treated_mean, control_mean, ceiling_mean)
            )
            rows.append({**diff.model_dump(), "strongest_by_val": control == strongest, "gap_closed": closed})
    return rows


def paired_lines(rows: Sequence[Mapping[str, Any]], ceiling: str = "centralized") -> list[str]:
    """The rows of :func:`paired_rows` as a Markdown table."""
    if not rows:
        return []
    lines = [
        "Federation − site-free run, test rsum after the last round, paired by seed (95 % t "
        "interval; sd = sample std of the differences). ★ = the strongest site-free run by val. "
        f"Gap closed = share of the control-to-`{ceiling}` gap.",
        "",
        "| federation | control | mean difference | 95 % interval | sd | per seed | gap closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        ci = "—" if p["ci_low"] is None else f"[{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]"
        sd = "—" if p["sd"] is None else f"{p['sd']:.1f}"
        closed = "—" if p["gap_closed"] is None else f"{100 * p['gap_closed']:.0f} %"
        star = " ★" if p["strongest_by_val"] else ""
        per_seed = ", ".join(f"{d:+.1f}" for d in p["per_seed"])
        lines.append(
            f"| {p['treated']} | {p['control']}{star} | {p['mean']:+.1f} | {ci} | {sd} | {per_seed} | {closed} |"
        )
    return lines
