"""Paired comparison of two methods run on the same seeds.

Seed s fixes the data partition, the initialisations and the batch order for every method, so
the honest comparison is the per-seed difference ``d_s = treated_s - control_s``. Over the n
seeds both hold:

.. math::

    \\bar d = \\frac{1}{n}\\sum_s d_s, \\quad
    s_d = \\sqrt{\\tfrac{1}{n-1}\\sum_s (d_s - \\bar d)^2}, \\quad
    \\bar d \\pm t_{0.975,\\,n-1}\\, s_d / \\sqrt{n}

(Student's t interval; ``s_d`` is the sample standard deviation, ddof 1). The share of a gap
closed is ``(treated - control) / (ceiling - control)`` on the means.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel
from scipy import stats


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
