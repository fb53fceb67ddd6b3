"""The run's central datum: what happened in each round, typed.

A :class:`RoundRecord` is written once per round by the round pipeline and read by everything
after it: the run store, the checkpoint, ``rounds.jsonl``, ``summary.json`` and the report.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mmfl.protocols.summary import RoundSummary, ServerMetrics, SiteRoundSummary

__all__ = ["RoundRecord", "ServerMetrics", "SiteReport"]


class SiteReport(BaseModel):
    """What one site did in one round, as the coordinator saw it."""

    site_id: str
    node_id: int
    accepted: bool = False
    reason: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    epsilon: float | None = Field(None, description="the site's epsilon after the round (DP sites)")
    modalities: list[str] = Field(default_factory=list)

    def refuse(self, reason: str) -> SiteReport:
        self.accepted, self.reason = False, reason
        return self


class RoundRecord(BaseModel):
    """One round: status, the server's metrics, every contacted site's report, the ensemble's
    diagnostics and the time it took."""

    round: int = Field(ge=1)
    status: Literal["completed", "failed"] = "completed"
    reason: str = ""
    server: ServerMetrics = Field(default_factory=ServerMetrics)
    sites: list[SiteReport] = Field(default_factory=list)
    weight_entropy: dict[str, float] = Field(default_factory=dict)
    contributors: dict[str, int] = Field(default_factory=dict)
    wall_seconds: float = 0.0
    phase_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="server-train, encode, exchange (send, site work, receive), merge, distil, evaluate",
    )

    @property
    def accepted(self) -> list[SiteReport]:
        return [s for s in self.sites if s.accepted]

    @property
    def bytes_down(self) -> int:
        return sum(s.bytes_down for s in self.sites)

    @property
    def bytes_up(self) -> int:
        return sum(s.bytes_up for s in self.sites)

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason

    def server_metrics(self) -> dict[str, object]:
        """The server's metrics as a plain dict, without the ones this round did not have."""
        return self.server.model_dump(exclude_none=True)

    def summary_row(self) -> RoundSummary:
        """This round as ``summary.json`` and ``rounds.jsonl`` carry it."""
        return RoundSummary(
            round=self.round,
            status=self.status,
            reason=self.reason,
            wall_seconds=self.wall_seconds,
            phase_seconds=self.phase_seconds,
            bytes_down=self.bytes_down,
            bytes_up=self.bytes_up,
            server_metrics=self.server,
            weight_entropy=self.weight_entropy,
            sites=[
                SiteRoundSummary.model_validate(
                    s.model_dump(
                        include={"site_id", "accepted", "reason", "bytes_down", "bytes_up", "epsilon", "metrics"}
                    )
                )
                for s in self.sites
            ],
        )
