"""What the console shows, typed: the data layer fills these, the templates read them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SiteView(BaseModel):
    """A site as the operator sees it: its key's registration and its last self-description."""

    name: str
    node_id: int | None = None
    registered: bool = False
    registered_at: str | None = None
    revoked: bool = False
    online: bool | None = Field(None, description="None: not known (no daemon, or a simulation)")
    last_seen: str | None = None
    device: str | None = None
    modalities: list[str] = Field(default_factory=list)
    public_fingerprint: str | None = None
    fingerprint_match: bool | None = None
    dp: bool = False
    epsilon_spent: float | None = None
    epsilon_budget: float | None = None


class RunRow(BaseModel):
    """One run in the list: what it is, how far it got."""

    run_id: str
    name: str = ""
    strategy: str = ""
    dataset: str = ""
    status: str = ""
    rounds_planned: int | None = None
    rounds_done: int = 0
    rounds_failed: int = 0
    current_round: int | None = Field(None, description="the round in progress (running runs)")
    last_test_rsum: float | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def final(self) -> bool:
        """The run is over: nothing more will be recorded (unless it is resumed)."""
        return self.status.startswith("completed") or self.status == "failed"


class SiteRoundView(BaseModel):
    """One contacted site's part in one round."""

    site_id: str
    accepted: bool
    reason: str = ""
    epsilon: float | None = None
    bytes_down: int = 0
    bytes_up: int = 0


class RoundView(BaseModel):
    """One finished round: outcome, the server's metrics, bytes, time and every site's part."""

    round: int
    status: str
    reason: str = ""
    train_loss: float | None = None
    distill_loss: float | None = None
    val: dict[str, float] = Field(default_factory=dict, description="rsum per modality pair")
    test: dict[str, float] = Field(default_factory=dict, description="rsum per modality pair")
    bytes_down: int = 0
    bytes_up: int = 0
    wall_seconds: float = 0.0
    sites: list[SiteRoundView] = Field(default_factory=list)

    @property
    def accepted(self) -> list[SiteRoundView]:
        return [s for s in self.sites if s.accepted]

    @property
    def dropped(self) -> list[SiteRoundView]:
        return [s for s in self.sites if not s.accepted]


class EventView(BaseModel):
    """Something the operator should know about: a failed round, a resume, a refusal."""

    at: str = ""
    run_id: str = ""
    kind: str
    message: str

    @property
    def severity(self) -> str:
        bad = ("failed", "error", "refused", "rollback", "expired")
        return "bad" if any(w in self.kind for w in bad) else "info"


class PrivacySite(BaseModel):
    """One site's privacy in one run: epsilon after each round against its budget."""

    site_id: str
    budget: float | None = None
    by_round: dict[int, float | None] = Field(default_factory=dict)

    @property
    def latest(self) -> float | None:
        spent = [e for _, e in sorted(self.by_round.items()) if e is not None]
        return spent[-1] if spent else None


class CertificateView(BaseModel):
    """A certificate of the coordinator and when it expires."""

    file: str
    subject: str
    not_after: str
    days_left: int
    expires_at: str = Field("", description="the exact moment, YYYY-MM-DD HH:MM:SS UTC")


class RunDetail(BaseModel):
    """One run, round by round, with its privacy and its events."""

    run: RunRow
    rounds: list[RoundView] = Field(default_factory=list)
    privacy: list[PrivacySite] = Field(default_factory=list)
    refusals: list[EventView] = Field(default_factory=list, description="privacy refusals")
    events: list[EventView] = Field(default_factory=list)
    dp_sites: list[str] | None = Field(
        None, description="the run's sites that train with DP; None: its sites are not known yet"
    )

    @property
    def live(self) -> str:
        """The page's state: ``live`` while the run runs, ``final`` once it is over."""
        return "final" if self.run.final else "live"

    @property
    def delivered(self) -> str | None:
        """What the run delivered and the federation's gain (its ``delivered`` event), if over."""
        lines = [e.message for e in self.events if e.kind == "delivered"]
        return lines[-1] if lines else None

    @property
    def pairs(self) -> list[str]:
        """The modality pairs measured, in the order they first appear."""
        return list(dict.fromkeys(p for r in self.rounds for split in (r.val, r.test) for p in split))


class Overview(BaseModel):
    """The front page: sites, runs, recent events and certificates."""

    source: str
    kind: str = Field(description="'coordinator', 'store' or 'simulation'")
    sites: list[SiteView] = Field(default_factory=list)
    runs: list[RunRow] = Field(default_factory=list)
    events: list[EventView] = Field(default_factory=list)
    certificates: list[CertificateView] = Field(default_factory=list)
    generated_at: str = ""

    @property
    def final(self) -> bool:
        """Nothing more will be recorded: a run folder whose runs are all over (a store or a
        coordinator may start another run at any time)."""
        return self.kind == "simulation" and bool(self.runs) and all(r.final for r in self.runs)

    @property
    def live(self) -> str:
        """The page's state: ``final`` (see :attr:`final`), ``live`` while a run runs, else
        ``idle`` (no run in progress; a new one shows when it starts)."""
        if self.final:
            return "final"
        return "live" if any(not r.final for r in self.runs) else "idle"
