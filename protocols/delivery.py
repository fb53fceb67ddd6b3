"""What a run delivers, as recorded in its ``summary.json`` (``delivery``): which model, chosen
how, and what the federation gained over the coordinator alone.

A run's candidates are the federation's model and the site-free controls the coordinator
built beside it (``server-only``, and the method's offline control: models it can make without
any site). The delivered model is the candidate with the highest validation rsum (the
federation's on a tie); test is reported, never used to choose.

    gain = rsum(federation) - max over controls of rsum(control)     (on val, and on test)

A negative gain is a federation that lost to the coordinator alone, and is stated as such.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Candidate(BaseModel):
    """One model a run could deliver, with its retrieval rsum on val and on test."""

    model_config = ConfigDict(extra="forbid")
    strategy: str
    source: Literal["federation", "control"]
    val_rsum: float | None
    test_rsum: float | None
    folder: str
    """Where its run lies, relative to the run folder (``.`` for the federation)."""


class Delivery(BaseModel):
    """The run's deliverable and why (``selection`` off: the federation's, unchosen)."""

    model_config = ConfigDict(extra="forbid")
    selection: bool
    delivered: str
    source: Literal["federation", "control"]
    candidates: list[Candidate]
    strongest_control: str | None = None
    gain_val: float | None = None
    gain_test: float | None = None
    line: str

    @classmethod
    def choose(cls, federation: Candidate, controls: list[Candidate]) -> Delivery:
        """The better on val of the federation and its strongest control (see the module)."""
        scored = [c for c in controls if c.val_rsum is not None]
        if federation.val_rsum is None or not scored:
            return cls.only(federation, "no site-free control was scored on val, so nothing was compared")
        best = max(scored, key=lambda c: c.val_rsum or 0.0)
        assert best.val_rsum is not None
        gain_val = federation.val_rsum - best.val_rsum
        gain_test = (
            federation.test_rsum - best.test_rsum
            if federation.test_rsum is not None and best.test_rsum is not None
            else None
        )
        won = gain_val >= 0
        chosen = federation if won else best
        test = f", test {gain_test:+.1f}" if gain_test is not None else ""
        verdict = (
            f"the federation ({federation.strategy}) gained {gain_val:+.1f} val rsum{test} over the "
            f"coordinator alone ({best.strategy})"
            if won
            else f"the federation ({federation.strategy}) lost to the coordinator alone: {gain_val:+.1f} "
            f"val rsum{test} against {best.strategy}"
        )
        return cls(
            selection=True,
            delivered=chosen.strategy,
            source=chosen.source,
            candidates=[federation, *controls],
            strongest_control=best.strategy,
            gain_val=gain_val,
            gain_test=gain_test,
            line=f"delivered: {chosen.strategy} (val rsum {chosen.val_rsum:.1f}); {verdict}",
        )

    @classmethod
    def only(cls, federation: Candidate, why: str) -> Delivery:
        """The run's own model, compared with nothing, and ``why``."""
        return cls(
            selection=False,
            delivered=federation.strategy,
            source="federation",
            candidates=[federation],
            line=f"delivered: {federation.strategy}'s model; {why}",
        )
