"""The console's data from a run store (SQLite or PostgreSQL), opened read-only, and — for a
coordinator's server folder — its registered sites, the SuperLink's node list and certificates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mmfl.errors import MmflError
from mmfl.server.console.convert import (
    failed_round_events,
    pair_rsums,
    privacy_of,
    privacy_refusals,
    round_view,
    timestamp,
)
from mmfl.server.console.coordinator import NodeList, certificates, registrations
from mmfl.server.console.views import (
    CertificateView,
    EventView,
    Overview,
    PrivacySite,
    RoundView,
    RunDetail,
    RunRow,
    SiteRoundView,
    SiteView,
)
from mmfl.server.daemon import ServerLayout
from mmfl.server.store import EventRow, RoundRow, Run, SiteRoundRow, SiteRow, store_url

RUNS_SHOWN = 50
EVENTS_SHOWN = 50
CERT_WARN_DAYS = 30
Nodes = Callable[[], dict[int, dict[str, Any]] | None]


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite opened with ``mode=ro``, PostgreSQL sessions read-only.
    A missing SQLite file or a store without mmfl's tables is one line."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise MmflError(f"no run store at {path}")
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 30})
    elif url.startswith("postgresql"):
        engine = create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
    else:
        engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise MmflError(f"cannot read run store {_shown(url)}: {_first_line(exc)}") from None
    if not {"runs", "rounds", "site_rounds", "sites", "events"} <= tables:
        raise MmflError(f"{_shown(url)} is not an mmfl run store (no runs, rounds, sites and events tables)")
    return engine


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _device(caps: dict[str, Any]) -> str | None:
    device = caps.get("device") or {}
    if not device:
        return None
    memory = f", {device['memory_gb']:.0f} GB" if device.get("memory_gb") else ""
    return f"{device.get('kind', '?')}: {device.get('name', '?')}{memory}"


def _run_row(run: Run, rounds: list[RoundRow]) -> RunRow:
    done = [r for r in rounds if r.status == "completed"]
    planned = (run.config or {}).get("rounds")
    last = max((r.round for r in rounds), default=0)
    current = None
    if run.status == "running" and (planned is None or last < planned):
        current = last + 1
    tests = [pair_rsums(r.metrics.get("test")) for r in rounds if r.metrics.get("test")]
    return RunRow(
        run_id=run.id,
        name=run.name,
        strategy=run.strategy,
        dataset=run.dataset,
        status=run.status,
        rounds_planned=planned,
        rounds_done=len(done),
        rounds_failed=len(rounds) - len(done),
        current_round=current,
        last_test_rsum=next(iter(tests[-1].values()), None) if tests else None,
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
    )


def certificate_event(cert: CertificateView) -> EventView:
    """A certificate that expires within ``CERT_WARN_DAYS`` (or has): an event at the moment it
    expired, or at the moment it came within the warning period."""
    expired = cert.days_left < 0
    at = cert.expires_at
    if not expired and at:
        expiry = datetime.fromisoformat(at.removesuffix(" UTC")).replace(tzinfo=UTC)
        at = timestamp(expiry - timedelta(days=CERT_WARN_DAYS)) or ""
    return EventView(
        at=at,
        kind="certificate-expired" if expired else "certificate-expiring",
        message=f"{cert.file} ({cert.subject}) expires {cert.not_after}, in {cert.days_left} days",
    )


def dp_sites(
    declared: dict[str, dict[str, Any]], privacy: list[PrivacySite], known: bool
) -> list[str] | None:
    """The run's DP sites: those that declared privacy enabled, or reported an epsilon; None
    while no site has registered yet and nothing says the run will have none (``known``)."""
    dp = {name for name, caps in declared.items() if (caps.get("privacy") or {}).get("enabled")}
    dp |= {p.site_id for p in privacy if p.latest is not None}
    return sorted(dp) if dp or declared or known else None


class StoreSource:
    """Reads a run store; with ``layout`` (a server folder) also the sites' registrations, the
    node list (``nodes``, default: the SuperLink's, cached) and the certificates."""

    def __init__(
        self, url: str, layout: ServerLayout | None = None, nodes: Nodes | None = None, label: str = ""
    ) -> None:
        self.url = store_url(url)
        self.layout = layout
        self.nodes: Nodes = nodes or (NodeList(layout) if layout is not None else (lambda: None))
        self.label = label or (str(layout.root) if layout else _shown(self.url))
        self._engine: Engine | None = None
        # A server folder without a store yet (no run submitted) is empty, not an error.
        if layout is None or not self._missing_sqlite():
            self._engine = read_only_engine(self.url)

    def _missing_sqlite(self) -> bool:
        return self.url.startswith("sqlite:///") and not Path(self.url.removeprefix("sqlite:///")).exists()

    def _session(self) -> Session | None:
        if self._engine is None and self.layout is not None and not self._missing_sqlite():
            self._engine = read_only_engine(self.url)
        return None if self._engine is None else Session(self._engine)

    def _read(self, fn: Callable[[Session], Any], empty: Any) -> Any:  # noqa: ANN401
        session = self._session()
        if session is None:
            return empty
        try:
            with session:
                return fn(session)
        except SQLAlchemyError as exc:
            raise MmflError(f"cannot read run store {_shown(self.url)}: {_first_line(exc)}") from None

    # -- the front page --------------------------------------------------------------------------
    def overview(self) -> Overview:
        runs, events, caps, spent, joined = self._read(self._overview_rows, ([], [], {}, {}, {}))
        certs = certificates(self.layout.tls) if self.layout else []
        events += [certificate_event(c) for c in certs if c.days_left < CERT_WARN_DAYS]
        return Overview(
            source=self.label,
            kind="coordinator" if self.layout else "store",
            sites=self._sites(caps, spent, joined, events),
            runs=runs,
            events=sorted(events, key=lambda e: e.at, reverse=True)[:EVENTS_SHOWN],
            certificates=certs,
            generated_at=timestamp(datetime.now(UTC)) or "",
        )

    def _overview_rows(self, s: Session) -> tuple:
        runs = list(s.scalars(select(Run).order_by(Run.started_at.desc()).limit(RUNS_SHOWN)))
        ids = [r.id for r in runs]
        rounds: dict[str, list[RoundRow]] = {i: [] for i in ids}
        for row in s.scalars(select(RoundRow).where(RoundRow.run_id.in_(ids)).order_by(RoundRow.round)):
            rounds[row.run_id].append(row)
        started = {r.id: r.started_at for r in runs}
        events = [
            EventView(at=timestamp(e.at) or "", run_id=e.run_id, kind=e.kind, message=e.message)
            for e in s.scalars(select(EventRow).order_by(EventRow.at.desc()).limit(EVENTS_SHOWN))
        ]
        for run_id, rows in rounds.items():
            failed = [
                round_view(r.round, r.status, r.reason, {}, [], 0.0, 0, 0)
                for r in rows
                if r.status != "completed"
            ]
            at = {r.round: timestamp(r.finished_at) or "" for r in rows}
            events += failed_round_events(run_id, failed, events, at)
        caps: dict[str, dict[str, Any]] = {}
        joined: dict[str, datetime] = {}
        all_started = dict(s.execute(select(Run.id, Run.started_at)).all())
        for row in s.scalars(select(SiteRow).order_by(SiteRow.id)):
            caps[row.site_id] = row.capabilities
            joined[row.site_id] = all_started.get(row.run_id) or started.get(row.run_id)
        spent: dict[str, float] = {}
        for site, eps in s.execute(
            select(SiteRoundRow.site_id, SiteRoundRow.epsilon).where(SiteRoundRow.epsilon.is_not(None))
        ):
            spent[site] = max(spent.get(site, 0.0), float(eps))
        return [_run_row(r, rounds[r.id]) for r in runs], events, caps, spent, joined

    def _sites(
        self,
        caps: dict[str, dict[str, Any]],
        spent: dict[str, float],
        joined: dict[str, datetime],
        events: list[EventView],
    ) -> list[SiteView]:
        regs = registrations(self.layout) if self.layout else {}
        nodes = self.nodes() if self.layout else None
        out = []
        for name in sorted(set(regs) | set(caps)):
            reg, cap = regs.get(name, {}), caps.get(name, {})
            node_id = reg.get("node_id")
            node = (nodes or {}).get(int(node_id)) if node_id is not None else None
            status = (node or {}).get("status")
            privacy = cap.get("privacy") or {}
            out.append(
                SiteView(
                    name=name,
                    node_id=node_id,
                    registered=bool(reg),
                    registered_at=timestamp(reg.get("registered_at")),
                    revoked=bool(reg.get("revoked")),
                    online=None if nodes is None else status == "online",
                    last_seen="now"
                    if status == "online"
                    else ((node or {}).get("offline-at") or (node or {}).get("online-at")),
                    device=_device(cap),
                    modalities=list(cap.get("modalities") or []),
                    public_fingerprint=cap.get("public_fingerprint"),
                    fingerprint_match=self._fingerprint_match(name, joined.get(name), events),
                    dp=bool(privacy.get("enabled")),
                    epsilon_spent=spent.get(
                        name, privacy.get("epsilon_spent") if privacy.get("enabled") else None
                    ),
                    epsilon_budget=privacy.get("target_epsilon"),
                )
            )
        return out

    @staticmethod
    def _fingerprint_match(name: str, joined: datetime | None, events: list[EventView]) -> bool | None:
        """True when the site's last registration into a run (which needs the coordinator's
        public-set fingerprint) is newer than any refusal of it for another fingerprint."""
        refused = [
            e.at for e in events if "fingerprint differs" in e.message and f"site {name}:" in e.message
        ]
        joined_at = timestamp(joined) if joined else None
        if refused and (joined_at is None or max(refused) > joined_at):
            return False
        return True if joined_at else None

    # -- one run ---------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunDetail | None:
        return self._read(lambda s: self._run(s, run_id), None)

    def _run(self, s: Session, run_id: str) -> RunDetail | None:
        run = s.get(Run, run_id)
        if run is None:
            return None
        rows = list(s.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)))
        by_round: dict[int, list[SiteRoundView]] = {r.id: [] for r in rows}
        for x in s.scalars(
            select(SiteRoundRow).where(SiteRoundRow.round_id.in_(list(by_round))).order_by(SiteRoundRow.id)
        ):
            by_round[x.round_id].append(
                SiteRoundView(
                    site_id=x.site_id,
                    accepted=x.accepted,
                    reason=x.reason,
                    epsilon=x.epsilon,
                    bytes_down=x.bytes_down,
                    bytes_up=x.bytes_up,
                )
            )
        rounds: list[RoundView] = [
            round_view(
                r.round,
                r.status,
                r.reason,
                r.metrics,
                by_round[r.id],
                r.wall_seconds,
                r.bytes_down,
                r.bytes_up,
            )
            for r in rows
        ]
        declared = {
            row.site_id: row.capabilities
            for row in s.scalars(select(SiteRow).where(SiteRow.run_id == run_id).order_by(SiteRow.id))
        }
        budgets = {  # a site without DP has no budget, whatever target it names
            name: privacy.get("target_epsilon") if privacy.get("enabled") else None
            for name, privacy in ((n, c.get("privacy") or {}) for n, c in declared.items())
        }
        events = [
            EventView(at=timestamp(e.at) or "", run_id=run_id, kind=e.kind, message=e.message)
            for e in s.scalars(select(EventRow).where(EventRow.run_id == run_id).order_by(EventRow.at))
        ]
        finished = {r.round: timestamp(r.finished_at) or "" for r in rows}
        all_events = sorted(
            [*events, *failed_round_events(run_id, rounds, events, finished)], key=lambda e: e.at
        )
        row = _run_row(run, rows)
        privacy = privacy_of(rounds, budgets)
        return RunDetail(
            run=row,
            rounds=rounds,
            privacy=privacy,
            refusals=privacy_refusals(run_id, rounds, events),
            events=all_events,
            dp_sites=dp_sites(declared, privacy, known=bool(rows) or row.final),
        )
