"""Calibrating the AF/EW switch on scenarios other than the one it is applied to.

A calibration point is a scenario's label-free domain-gap estimate ``g_i`` and the accuracy of
the fused predictor after agreement filtering (``a_i``) and after entropy weighting (``e_i``),
measured on that scenario's *adaptation* rows with their labels. The switch picks AF when
``gap > t``. The threshold minimises the calibration regret

.. math::

    R(t) = \\sum_i \\big[\\max(a_i, e_i) - (a_i \\text{ if } g_i > t \\text{ else } e_i)\\big]

over the candidates ``t`` in {below every gap, each midpoint of adjacent gaps, above every gap};
a tie goes to the candidate farthest (in log gap) from every calibration gap. Leave-one-out:
the threshold for scenario ``s`` uses every calibration point except ``s``'s own, so no row of
the scenario evaluated (labels or not) sets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel


class CalibrationPoint(BaseModel):
    """One scenario's gap estimate and its AF and EW accuracies on its adaptation rows."""

    gap: float
    af: float
    ew: float


def regret(threshold: float, points: list[CalibrationPoint]) -> float:
    """``R(t)``: accuracy lost against the better fusion, summed over the points."""
    return sum(max(p.af, p.ew) - (p.af if p.gap > threshold else p.ew) for p in points)


def candidates(gaps: list[float]) -> list[float]:
    """Below every gap, between each adjacent pair (geometric midpoint), above every gap."""
    g = sorted({max(x, 1e-12) for x in gaps})
    return [g[0] / 2, *[math.sqrt(a * b) for a, b in zip(g, g[1:], strict=False)], g[-1] * 2]


def calibrate_threshold(points: list[CalibrationPoint]) -> float:
    """The threshold with the least calibration regret (see the module docstring)."""
    if not points:
        raise ValueError("the switch needs at least one calibration scenario")
    gaps = [max(p.gap, 1e-12) for p in points]

    def margin(t: float) -> float:
        return min(abs(math.log(t) - math.log(g)) for g in gaps)

    return min(candidates(gaps), key=lambda t: (round(regret(t, points), 9), -margin(t)))


def leave_one_out(points: Mapping[str, CalibrationPoint]) -> dict[str, float]:
    """For each scenario, the threshold calibrated on all the other scenarios."""
    return {s: calibrate_threshold([p for o, p in points.items() if o != s]) for s in points}
