"""Small conversions shared by both data sources: raw round metrics into views, timestamps,
which reasons are about privacy."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from mmfl.server.console.views import EventView, PrivacySite, RoundView, SiteRoundView

PRIVACY_WORDS = re.compile(r"privacy|epsilon|budget|ledger", re.IGNORECASE)


def timestamp(value: datetime | str | float | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS UTC`` of a datetime (naive: the store's UTC), an ISO 8601 string
    or seconds since the epoch; None for None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace(" UTC", "").replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pair_rsums(block: dict[str, Any] | None) -> dict[str, float]:
    """R-sum per modality pair of a retrieval block (``image-text/rsum`` ...); a block without
    pairs gives its plain ``rsum`` as ``all``."""
    if not block:
        return {}
    pairs = {
        k.removesuffix("/rsum"): float(v) for k, v in block.items() if k.endswith("/rsum") and v is not None
    }
    if pairs:
        return pairs
    return {"all": float(block["rsum"])} if block.get("rsum") is not None else {}


def round_view(
    number: int,
    status: str,
    reason: str,
    server: dict[str, Any],
    sites: list[SiteRoundView],
    wall_seconds: float,
    bytes_down: int | None = None,
    bytes_up: int | None = None,
) -> RoundView:
    """A round from the server's metrics as stored (train_loss, distill_loss, val, test)."""
    return RoundView(
        round=number,
        status=status,
        reason=reason or "",
        train_loss=server.get("train_loss"),
        distill_loss=server.get("distill_loss"),
        val=pair_rsums(server.get("val")),
        test=pair_rsums(server.get("test")),
        bytes_down=sum(s.bytes_down for s in sites) if bytes_down is None else bytes_down,
        bytes_up=sum(s.bytes_up for s in sites) if bytes_up is None else bytes_up,
        wall_seconds=wall_seconds or 0.0,
        sites=sites,
    )


def failed_round_events(
    run_id: str, rounds: list[RoundView], known: list[EventView], at: dict[int, str] | None = None
) -> list[EventView]:
    """A ``round-failed`` event for every failed round that the run's own events (``known``)
    do not report already, with its reason."""
    reported = {e.message.split(":")[0] for e in known if e.kind == "round-failed" and e.run_id == run_id}
    return [
        EventView(
            at=(at or {}).get(r.round, ""),
            run_id=run_id,
            kind="round-failed",
            message=f"round {r.round}: {r.reason or 'no reason recorded'}",
        )
        for r in rounds
        if r.status != "completed" and f"round {r.round}" not in reported
    ]


def privacy_of(rounds: list[RoundView], budgets: dict[str, float | None]) -> list[PrivacySite]:
    """Epsilon after each round per DP site (a site that never reported epsilon is left out
    unless it declared a budget)."""
    sites: dict[str, PrivacySite] = {}
    for r in rounds:
        for s in r.sites:
            if s.epsilon is None and budgets.get(s.site_id) is None:
                continue
            entry = sites.setdefault(s.site_id, PrivacySite(site_id=s.site_id, budget=budgets.get(s.site_id)))
            entry.by_round[r.round] = s.epsilon
    return sorted(sites.values(), key=lambda p: p.site_id)


def privacy_refusals(run_id: str, rounds: list[RoundView], events: list[EventView]) -> list[EventView]:
    """Refusals that concern privacy: a ledger that went back or is locked, a budget that would be
    exceeded."""
    out = [
        e
        for e in events
        if e.kind in ("privacy-rollback", "privacy-locked")
        or (e.kind.endswith(("refused", "error")) and PRIVACY_WORDS.search(e.message))
    ]
    for r in rounds:
        for s in r.dropped:
            if PRIVACY_WORDS.search(s.reason):
                out.append(
                    EventView(
                        run_id=run_id,
                        kind="site-dropped",
                        message=f"round {r.round}: {s.site_id}: {s.reason}",
                    )
                )
    return out
