"""The console's data from a run folder (a simulation's, or a copied coordinator run): its
``plan.json``, the live ``rounds.jsonl`` (one line per event, a full record per round) and, once
finished, ``summary.json``. Controls run beside it (``controls/NAME/``) are runs of their own.
Needs no database, so it also reads a folder copied away from its store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmfl.errors import MmflError
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
    RoundView,
    RunDetail,
    RunRow,
    SiteRoundView,
    SiteView,
)

MARKERS = ("plan.json", "rounds.jsonl", "summary.json")


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


class RunFolder:
    """One run folder's files, read afresh on every call (the run may still be writing them)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[RunRow, list[RoundView], list[EventView], dict[str, Any], dict[str, Any]]:
        """The run's row, rounds (the newest record of each), events, plan and summary."""
        plan = _json(self.path / "plan.json") or {}
        summary = _json(self.path / "summary.json") or {}
        spec = plan.get("spec") or summary.get("config") or {}
        run_id = str(plan.get("run_id") or summary.get("run_id") or self.path.name)
        records: dict[int, RoundView] = {}
        events: list[EventView] = []
        started: int | None = None
        for item in _lines(self.path / "rounds.jsonl"):
            kind = item.get("event")
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
            elif kind == "round-start":
                started = item.get("round")
            elif kind not in ("start", "sites", "finish") and "message" in item:
                events.append(EventView(run_id=run_id, kind=str(kind), message=str(item["message"])))
        rounds = [records[k] for k in sorted(records)]
        failed = sum(1 for r in rounds if r.status != "completed")
        if summary:
            status = "completed" if not failed else "completed-with-failed-rounds"
        else:
            status = "running" if (self.path / "rounds.jsonl").exists() else "planned"
        test = [next(iter(r.test.values())) for r in rounds if r.test]
        row = RunRow(
            run_id=run_id,
            name=str(spec.get("name", "")),
            strategy=str(spec.get("strategy", summary.get("strategy", ""))),
            dataset=str(spec.get("dataset", "")),
            status=status,
            rounds_planned=spec.get("rounds"),
            rounds_done=len(rounds) - failed,
            rounds_failed=failed,
            current_round=started if status == "running" and started not in records else None,
            last_test_rsum=test[-1] if test else None,
            started_at=_mtime(self.path / "plan.json"),
            finished_at=_mtime(self.path / "summary.json") if summary else None,
        )
        return row, rounds, events, plan, summary


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

    def _folders(self) -> list[RunFolder]:
        controls = self.folder / "controls"
        extra = sorted(p for p in controls.iterdir() if p.is_dir()) if controls.is_dir() else []
        return [RunFolder(p) for p in [self.folder, *extra] if any((p / m).exists() for m in MARKERS)]

    def overview(self) -> Overview:
        runs, events = [], []
        sites: dict[str, SiteView] = {}
        for folder in self._folders():
            row, rounds, run_events, plan, summary = folder.read()
            runs.append(row)
            events += [*run_events, *failed_round_events(row.run_id, rounds, run_events)]
            if folder.path == self.folder:
                sites = _sites(plan, summary, rounds)
                for e in run_events:
                    for name, site in sites.items():
                        if "fingerprint differs" in e.message and f"site {name}:" in e.message:
                            site.fingerprint_match = False
        return Overview(
            source=self.label,
            kind="simulation",
            sites=list(sites.values()),
            runs=runs,
            events=events,
            generated_at=timestamp(datetime.now(UTC)) or "",
        )

    def run(self, run_id: str) -> RunDetail | None:
        for folder in self._folders():
            row, rounds, events, plan, summary = folder.read()
            if row.run_id != run_id:
                continue
            budgets = {s.name: s.epsilon_budget for s in _sites(plan, summary, rounds).values()}
            return RunDetail(
                run=row,
                rounds=rounds,
                privacy=privacy_of(rounds, budgets),
                refusals=privacy_refusals(run_id, rounds, events),
                events=[*events, *failed_round_events(run_id, rounds, events)],
            )
        return None


def _sites(plan: dict[str, Any], summary: dict[str, Any], rounds: list[RoundView]) -> dict[str, SiteView]:
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
    public = ((summary.get("dataset") or {}).get("public_fingerprint")) or None
    for s in summary.get("sites") or []:
        privacy, device = s.get("privacy") or {}, s.get("device") or {}
        out[s["id"]] = SiteView(
            name=s["id"],
            modalities=list(s.get("modalities") or []),
            device=f"{device.get('kind', '?')}: {device.get('name', '?')}" if device else None,
            public_fingerprint=public,
            fingerprint_match=True if public else None,
            dp=bool(privacy.get("enabled")),
            epsilon_spent=privacy.get("epsilon_spent") if privacy.get("enabled") else None,
            epsilon_budget=privacy.get("target_epsilon") if privacy.get("enabled") else None,
        )
    for r in rounds:  # while running: the newest epsilon each site reported
        for x in r.sites:
            if x.site_id in out and x.epsilon is not None and not summary:
                out[x.site_id].epsilon_spent = x.epsilon
    return out
