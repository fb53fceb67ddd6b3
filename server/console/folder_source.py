"""The console's data from a run folder (a simulation's, or a copied coordinator run): its
``plan.json``, the live ``rounds.jsonl`` (one line per event, a full record per round) and, once
finished, ``summary.json``. Controls run beside it (``controls/NAME/``) are runs of their own.
Needs no database, so it also reads a folder copied away from its store; when the run's SQLite
store is there (the plan's ``store_url``, or ``runs.sqlite`` in the folder) it only adds when
each event and round was recorded, which ``rounds.jsonl``'s lines do not say."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mmfl.errors import MmflError
from mmfl.protocols.summary import SUMMARY_FILE, RunSummary
from mmfl.server.console.convert import (
    failed_round_events,
    privacy_of,
    privacy_refusals,
    round_view,
    timestamp,
)
from mmfl.server.console.views import (
    EventView,
    Overview,
    PrivacySite,
    RoundView,
    RunDetail,
    RunRow,
    SiteRoundView,
    SiteView,
)
from mmfl.server.store import EventRow, RoundRow

MARKERS = ("plan.json", "rounds.jsonl", SUMMARY_FILE)


def _json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object; None when absent or (being rewritten) not readable yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lines(path: Path) -> list[dict[str, Any]]:
    """``rounds.jsonl``'s complete lines (a line being written is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _mtime(path: Path) -> str | None:
    try:
        return timestamp(datetime.fromtimestamp(path.stat().st_mtime, UTC))
    except OSError:
        return None


@dataclass
class Recorded:
    """When a run's events and rounds were recorded: (kind, message) -> times in order, and
    round -> when it finished."""

    events: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    rounds: dict[int, str] = field(default_factory=dict)


Times = Callable[[dict[str, Any], Path, str], Recorded]


@dataclass
class FolderRun:
    """One run folder as read now."""

    path: Path
    row: RunRow
    rounds: list[RoundView]
    events: list[EventView]
    plan: dict[str, Any]
    summary: RunSummary | None
    round_times: dict[int, str]

    def failed_round_events(self) -> list[EventView]:
        return failed_round_events(self.row.run_id, self.rounds, self.events, self.round_times)


class RunFolder:
    """One run folder's files, read afresh on every call (the run may still be writing them)."""

    def __init__(self, path: Path, times: Times | None = None) -> None:
        self.path = path
        self.times = times

    def read(self) -> FolderRun:
        """The run's row, rounds (the newest record of each), events (with the time each was
        recorded, where known), plan and summary."""
        plan = _json(self.path / "plan.json") or {}
        summary = RunSummary.read_if_done(self.path)
        spec = plan.get("spec") or (summary.config if summary else {})
        run_id = str(plan.get("run_id") or (summary.run_id if summary else "") or self.path.name)
        recorded = self.times(plan, self.path, run_id) if self.times else Recorded()
        round_times = dict(recorded.rounds)
        records: dict[int, RoundView] = {}
        events: list[EventView] = []
        started: int | None = None
        stopped: str | None = None  # the run ended on an error (or was interrupted)
        for item in _lines(self.path / "rounds.jsonl"):
            kind = item.get("event")
            if kind in ("failed", "interrupted", "start"):
                stopped = None if kind == "start" else kind  # "start" again: resumed
            if kind == "round" and isinstance(item.get("round"), int):
                sites = [
                    SiteRoundView(
                        site_id=str(s.get("site_id", "?")),
                        accepted=bool(s.get("accepted")),
                        reason=str(s.get("reason") or ""),
                        epsilon=s.get("epsilon"),
                        bytes_down=int(s.get("bytes_down") or 0),
                        bytes_up=int(s.get("bytes_up") or 0),
                    )
                    for s in item.get("sites") or []
                ]
                records[item["round"]] = round_view(
                    item["round"],
                    str(item.get("status", "completed")),
                    str(item.get("reason") or ""),
                    item.get("server") or item.get("server_metrics") or {},
                    sites,
                    float(item.get("wall_seconds") or 0.0),
                )
                if item.get("at"):
                    round_times[item["round"]] = timestamp(item["at"]) or ""
            elif kind == "round-start":
                started = item.get("round")
            elif kind not in ("start", "sites", "finish") and "message" in item:
                kind, message = str(kind), str(item["message"])
                # The store holds the same events in the same order: the n-th line of a
                # (kind, message) is its n-th row. A line's own time, if it has one, wins.
                queue = recorded.events.get((kind, message)) or []
                stored = queue.pop(0) if queue else ""
                at = (timestamp(item["at"]) or "") if item.get("at") else stored
                events.append(EventView(at=at, run_id=run_id, kind=kind, message=message))
        rounds = [records[k] for k in sorted(records)]
        failed = sum(1 for r in rounds if r.status != "completed")
        if summary is not None:
            status = "completed" if not failed else "completed-with-failed-rounds"
        elif stopped:
            status = stopped
        else:
            status = "running" if (self.path / "rounds.jsonl").exists() else "planned"
        test = [next(iter(r.test.values())) for r in rounds if r.test]
        row = RunRow(
            run_id=run_id,
            name=str(spec.get("name", "")),
            strategy=str(spec.get("strategy") or (summary.strategy if summary else "")),
            dataset=str(spec.get("dataset", "")),
            status=status,
            rounds_planned=spec.get("rounds"),
            rounds_done=len(rounds) - failed,
            rounds_failed=failed,
            current_round=started if status == "running" and started not in records else None,
            last_test_rsum=test[-1] if test else None,
            started_at=_mtime(self.path / "plan.json"),
            finished_at=_mtime(self.path / SUMMARY_FILE) if summary else None,
        )
        return FolderRun(self.path, row, rounds, events, plan, summary, round_times)


def _store_file(plan: dict[str, Any], folder: Path) -> Path | None:
    """The run's SQLite store: the one its plan names, else ``runs.sqlite`` beside it."""
    url = str(plan.get("store_url") or "")
    named = [Path(url.removeprefix("sqlite:///"))] if url.startswith("sqlite:///") else []
    return next((p for p in [*named, folder / "runs.sqlite"] if p.is_file()), None)


class FolderSource:
    """A run folder and the control runs inside it."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise MmflError(f"run folder {folder} does not exist or is not a folder")
        if not any((folder / m).exists() for m in MARKERS):
            raise MmflError(f"{folder} is not a run folder (it holds none of {', '.join(MARKERS)})")
        try:
            next(folder.iterdir(), None)
        except OSError as exc:
            raise MmflError(f"cannot read run folder {folder}: {exc.strerror}") from None
        self.folder = folder
        self.label = str(folder)
        self._engines: dict[Path, Engine] = {}

    def _recorded(self, plan: dict[str, Any], folder: Path, run_id: str) -> Recorded:
        """When the run's events and rounds were recorded, from its SQLite store (read-only);
        nothing when there is none or it cannot be read now."""
        path = _store_file(plan, folder)
        if path is None:
            return Recorded()
        from mmfl.server.console.store_source import read_only_engine

        try:
            if path not in self._engines:
                self._engines[path] = read_only_engine(f"sqlite:///{path}")
            out = Recorded()
            with Session(self._engines[path]) as s:
                for kind, message, at in s.execute(
                    select(EventRow.kind, EventRow.message, EventRow.at)
                    .where(EventRow.run_id == run_id)
                    .order_by(EventRow.id)
                ):
                    out.events.setdefault((kind, message), []).append(timestamp(at) or "")
                for number, at in s.execute(
                    select(RoundRow.round, RoundRow.finished_at)
                    .where(RoundRow.run_id == run_id)
                    .order_by(RoundRow.id)
                ):
                    out.rounds[number] = timestamp(at) or ""
            return out
        except (MmflError, SQLAlchemyError):
            return Recorded()

    def _runs(self) -> list[FolderRun]:
        """The folder's run, then its controls. A control is a child of the run: one that
        failed (a ``control-failed`` event), or is unfinished once the run is over, failed."""
        controls = self.folder / "controls"
        extra = sorted(p for p in controls.iterdir() if p.is_dir()) if controls.is_dir() else []
        folders = [p for p in [self.folder, *extra] if any((p / m).exists() for m in MARKERS)]
        runs = [RunFolder(p, self._recorded).read() for p in folders]
        main = next((r for r in runs if r.path == self.folder), None)
        if main is not None:
            failed = {e.message.split(":")[0] for e in main.events if e.kind == "control-failed"}
            for run in runs:
                if run is main or run.row.final:
                    continue
                if main.row.final or run.path.name in failed:
                    run.row = run.row.model_copy(update={"status": "failed", "current_round": None})
        return runs

    def overview(self) -> Overview:
        runs, events = [], []
        sites: dict[str, SiteView] = {}
        for run in self._runs():
            runs.append(run.row)
            events += [*run.events, *run.failed_round_events()]
            if run.path == self.folder:
                sites = _sites(run.plan, run.summary, run.rounds)
                for e in run.events:
                    for name, site in sites.items():
                        if "fingerprint differs" in e.message and f"site {name}:" in e.message:
                            site.fingerprint_match = False
        return Overview(
            source=self.label,
            kind="simulation",
            sites=list(sites.values()),
            runs=runs,
            events=sorted(events, key=lambda e: e.at, reverse=True),  # newest first, as a store's
            generated_at=timestamp(datetime.now(UTC)) or "",
        )

    def run(self, run_id: str) -> RunDetail | None:
        for run in self._runs():
            if run.row.run_id != run_id:
                continue
            sites = _sites(run.plan, run.summary, run.rounds)
            budgets = {s.name: s.epsilon_budget for s in sites.values()}
            privacy = privacy_of(run.rounds, budgets)
            return RunDetail(
                run=run.row,
                rounds=run.rounds,
                privacy=privacy,
                refusals=privacy_refusals(run_id, run.rounds, run.events),
                events=[*run.events, *run.failed_round_events()],
                dp_sites=_dp_sites(run, privacy),
            )
        return None


def _dp_sites(run: FolderRun, privacy: list[PrivacySite]) -> list[str] | None:
    """The run's DP sites: those that took part with privacy enabled (the summary's sites once
    over, else the simulated sites of the plan) and any site that reported an epsilon; None
    while not known (a coordinator's run, whose sites describe themselves, before its first
    round)."""
    reported = {p.site_id for p in privacy if p.latest is not None}
    if run.summary is not None:
        enabled = set(run.summary.dp_sites)
    elif run.plan.get("site_configs"):  # a simulation: its sites are the plan's
        described = (run.plan.get("spec") or {}).get("sites") or []
        enabled = {str(s.get("id")) for s in described if (s.get("privacy") or {}).get("enabled")}
    elif reported or run.rounds or run.row.final or run.plan.get("expected_sites") == 0:
        enabled = set()
    else:
        return None
    return sorted(enabled | reported)


def _sites(plan: dict[str, Any], summary: RunSummary | None, rounds: list[RoundView]) -> dict[str, SiteView]:
    """The simulated sites: as planned, then as they last described themselves (summary)."""
    out: dict[str, SiteView] = {}
    for s in (plan.get("spec") or {}).get("sites") or []:
        privacy = s.get("privacy") or {}
        out[s["id"]] = SiteView(
            name=s["id"],
            modalities=list(s.get("modalities") or []),
            device=str(s.get("device") or "") or None,
            dp=bool(privacy.get("enabled")),
            epsilon_budget=privacy.get("target_epsilon") if privacy.get("enabled") else None,
        )
    public = summary.dataset.public_fingerprint if summary else None
    for site in summary.sites if summary else []:
        privacy = site.privacy
        out[site.id] = SiteView(
            name=site.id,
            modalities=list(site.modalities),
            device=f"{site.device.kind}: {site.device.name}",
            public_fingerprint=public,
            fingerprint_match=True if public else None,
            dp=privacy.enabled,
            epsilon_spent=privacy.epsilon_spent if privacy.enabled else None,
            epsilon_budget=privacy.target_epsilon if privacy.enabled else None,
        )
    for r in rounds:  # while running: the newest epsilon each site reported
        for x in r.sites:
            if x.site_id in out and x.epsilon is not None and summary is None:
                out[x.site_id].epsilon_spent = x.epsilon
    return out
