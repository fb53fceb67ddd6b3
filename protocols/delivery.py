"""What a run delivers, as recorded in its ``summary.json`` (``delivery``): which model, chosen
how, and what the federation gained over the coordinator alone.

A run's candidates are the federation's models (its server, and the sites' ensemble where sites
released their final models) and the site-free controls the coordinator built beside them
(``server-only``, and the method's offline control: models it can make without any site). The
delivered model is the candidate with the highest validation rsum (on a tie the federation's
server, then the ensemble); test is reported, never used to choose.

    gain = max over the federation's models of rsum - max over controls of rsum   (val; test alike)

A negative gain is a federation that lost to the coordinator alone, and is stated as such.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Candidate(BaseModel):
    """One model a run could deliver, with its retrieval rsum on val and on test."""

    model_config = ConfigDict(extra="forbid")
    strategy: str
    source: Literal["federation", "ensemble", "control"]
    val_rsum: float | None
    test_rsum: float | None
    folder: str
    """Where its run lies, relative to the run folder (``.`` for the federation)."""


class EnsembleRecord(BaseModel):
    """The sites' ensemble, when consenting sites released their final models
    (:mod:`mmfl.server.release`): its members, val rsum per number of members, the released sites
    left out and why, each member's contribution (leave-one-out on val), its val and test blocks."""

    model_config = ConfigDict(extra="forbid")
    sites: list[str] = Field(min_length=1)
    architectures: list[dict[str, str]]
    val_rsum_by_members: dict[str, float]
    left_out: dict[str, str]
    contributions_val: dict[str, float] = Field(default_factory=dict)
    val: dict[str, float]
    test: dict[str, float]


class Delivery(BaseModel):
    """The run's deliverable and why (``selection`` off: the federation's, unchosen)."""

    model_config = ConfigDict(extra="forbid")
    selection: bool
    delivered: str
    source: Literal["federation", "ensemble", "control"]
    candidates: list[Candidate]
    strongest_control: str | None = None
    gain_val: float | None = None
    gain_test: float | None = None
    line: str
    ensemble: EnsembleRecord | None = None

    @classmethod
    def choose(
        cls, federation: Candidate, controls: list[Candidate], ensemble: Candidate | None = None
    ) -> Delivery:
        """The best on val of the federation's models and its strongest control (see the module)."""
        federated = [c for c in (federation, ensemble) if c is not None and c.val_rsum is not None]
        scored = [c for c in controls if c.val_rsum is not None]
        candidates = [federation, *([ensemble] if ensemble else []), *controls]
        if not federated or not scored:
            return cls.only(federation, "no site-free control was scored on val, so nothing was compared")
        ours = max(federated, key=lambda c: c.val_rsum or 0.0)  # the server first on a tie
        best = max(scored, key=lambda c: c.val_rsum or 0.0)
        assert ours.val_rsum is not None and best.val_rsum is not None
        gain_val = ours.val_rsum - best.val_rsum
        gain_test = (
            ours.test_rsum - best.test_rsum
            if ours.test_rsum is not None and best.test_rsum is not None
            else None
        )
        won = gain_val >= 0
        chosen = ours if won else best
        test = f", test {gain_test:+.1f}" if gain_test is not None else ""
        whose = ", its sites' ensemble" if ours is ensemble else ""
        name = f"the federation ({federation.strategy}{whose})"
        verdict = (
            f"{name} gained {gain_val:+.1f} val rsum{test} over the coordinator alone ({best.strategy})"
            if won
            else f"{name} lost to the coordinator alone: {gain_val:+.1f} val rsum{test} against {best.strategy}"
        )
        line = f"delivered: {chosen.strategy} (val rsum {chosen.val_rsum:.1f}); {verdict}"
        if ensemble is not None and chosen is ensemble and federation.val_rsum is not None:
            line += f"; the compact server ({federation.strategy}) scored {federation.val_rsum:.1f} on val"
        return cls(
            selection=True,
            delivered=chosen.strategy,
            source=chosen.source,
            candidates=candidates,
            strongest_control=best.strategy,
            gain_val=gain_val,
            gain_test=gain_test,
            line=line,
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
