"""``mmfl runs``: list and show runs from any run store — a simulation folder, a folder of them,
a coordinator's server folder, a SQLite file or a PostgreSQL URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mmfl import terminal
from mmfl.errors import MmflError
from mmfl.server.store import EventRow, RoundRow, Run, RunStore, SiteRoundRow, open_store

app = typer.Typer(
    help="List and show runs from any run store (simulation or coordinator).", no_args_is_help=True
)
console = terminal.console()
SourceArg = typer.Argument(
    None,
    help="a run folder, a folder of runs (searched 3 levels deep), a server folder, a .sqlite file "
    "or a database URL (default: ./runs)",
)
STORE_FILE = "runs.sqlite"


def stores_of(source: str | None) -> list[str]:
    """The run-store URLs ``source`` names (see ``SourceArg``)."""
    if source and "://" in source:
        return [source]
    path = Path(source or "runs")
    if not path.exists():
        raise MmflError(f"{path} does not exist (give a run folder, a server folder or a store URL)")
    if path.is_file():
        return [f"sqlite:///{path.resolve()}"]
    if (path / "server.toml").exists():
        from mmfl.server.daemon import ServerLayout

        return [ServerLayout(path.resolve()).store()]
    found = sorted(
        {p.resolve() for depth in range(4) for p in path.glob("/".join(["*"] * depth + [STORE_FILE]))}
    )
    if not found:
        raise MmflError(f"no run store ({STORE_FILE}) in {path} or the 3 levels below it")
    return [f"sqlite:///{p}" for p in found]


def read_store(url: str, fn):  # noqa: ANN001, ANN202
    """``fn(engine)`` on the store at ``url``; a damaged or unreachable store is one line."""
    try:
        return fn(open_store(url, create=False))
    except SQLAlchemyError as exc:
        raise MmflError(
            f"cannot read run store {url}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}"
        ) from None


@app.command("list")
def list_cmd(
    source: str | None = SourceArg,
    limit: int = typer.Option(50, "--limit", help="newest runs per store"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every run of the store(s): status, rounds, last round's test rsum, ε per site."""
    rows: list[dict[str, Any]] = []
    for url in stores_of(source):
        for r in read_store(url, lambda engine: RunStore.recent(engine, limit)):
            last = r.last_round
            rows.append(
                {
                    "run_id": r.run_id,
                    "strategy": r.strategy,
                    "status": r.status,
                    "rounds": r.rounds,
                    "last_round": None if last is None else last.round,
                    "last_rsum": None if last is None else last.rsum,
                    "epsilon": r.epsilon,
                    "store": url,
                }
            )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} runs")
    table.add_column("run", overflow="fold")
    for col in ("strategy", "status", "rounds", "test rsum", "ε per site"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["run_id"],
            r["strategy"],
            r["status"],
            str(r["rounds"]),
            "—" if r["last_rsum"] is None else f"{r['last_rsum']:.1f}",
            ", ".join(f"{k} {v:.2f}" for k, v in r["epsilon"].items()) or "—",
        )
    console.print(table)


def _details(engine, run_id: str) -> dict[str, Any] | None:  # noqa: ANN001
    with Session(engine) as s:
        run = s.get(Run, run_id)
        if run is None:
            return None
        rounds = s.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)).all()
        out = []
        for row in rounds:
            sites = s.scalars(select(SiteRoundRow).where(SiteRoundRow.round_id == row.id)).all()
            out.append(
                {
                    "round": row.round,
                    "status": row.status,
                    "reason": row.reason,
                    "test": (row.metrics.get("test") or {}),
                    "val_rsum": (row.metrics.get("val") or {}).get("rsum"),
                    "bytes": row.bytes_down + row.bytes_up,
                    "seconds": row.wall_seconds,
                    "sites": [
                        {"site": x.site_id, "accepted": x.accepted, "reason": x.reason, "epsilon": x.epsilon}
                        for x in sites
                    ],
                }
            )
        events = s.scalars(select(EventRow).where(EventRow.run_id == run_id).order_by(EventRow.at)).all()
        return {
            "run_id": run.id,
            "name": run.name,
            "strategy": run.strategy,
            "dataset": run.dataset,
            "seed": run.seed,
            "status": run.status,
            "output_dir": run.output_dir,
            "started_at": str(run.started_at),
            "finished_at": None if run.finished_at is None else str(run.finished_at),
            "rounds": out,
            "events": [{"at": str(e.at), "kind": e.kind, "message": e.message} for e in events],
        }


def _matching(engine, prefix: str) -> list[str]:  # noqa: ANN001
    """The ids of the store's runs that start with ``prefix`` (an exact id matches alone)."""
    with Session(engine) as s:
        if s.get(Run, prefix) is not None:
            return [prefix]
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return list(s.scalars(select(Run.id).where(Run.id.like(f"{escaped}%", escape="\\")).order_by(Run.id)))


def resolve_run(run: str, source: str | None) -> tuple[str, str]:
    """``run`` (a full id, a unique prefix of one, or a run's folder) as (store URL, run id)."""
    folder = Path(run)
    if (folder / "plan.json").is_file():
        run_id = json.loads((folder / "plan.json").read_text())["run_id"]
        urls = stores_of(source or str(folder))
        prefix = run_id
    else:
        urls, prefix = stores_of(source), run
    found = [(url, rid) for url in urls for rid in read_store(url, lambda engine: _matching(engine, prefix))]
    exact = [f for f in found if f[1] == prefix]
    if len(exact) == 1 or len(found) == 1:
        return (exact or found)[0]
    if not found:
        raise MmflError(f"no run {run!r} in {source or 'runs'} (mmfl runs list shows their ids)")
    shown = ", ".join(sorted({rid for _, rid in found})[:5])
    raise MmflError(
        f"{len(found)} runs start with {run!r}: {shown}{', ...' if len(found) > 5 else ''}; give more of the id"
    )


@app.command("show")
def show_cmd(
    run: str = typer.Argument(
        ..., help="the run's id, a unique prefix of it, or its folder (see `mmfl runs list`)"
    ),
    source: str | None = SourceArg,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One run round by round: status, test rsum of every modality pair, bytes, sites, events."""
    url, run_id = resolve_run(run, source)
    details = read_store(url, lambda engine: _details(engine, run_id))
    if details is None:
        raise MmflError(f"no run {run!r} in {source or 'runs'}")
    if as_json:
        print(json.dumps(details, indent=2))
        return
    console.print(
        f"{details['run_id']}: {details['strategy']} on {details['dataset']}, seed {details['seed']}, "
        f"{details['status']}; output {details['output_dir']}"
    )
    pairs = list(
        dict.fromkeys(
            k.removesuffix("/rsum") for r in details["rounds"] for k in r["test"] if k.endswith("/rsum")
        )
    )
    table = Table()
    for col in ("round", "status", "val rsum", *(f"test {p}" for p in pairs or ["rsum"]), "MB", "s", "sites"):
        table.add_column(col)
    for r in details["rounds"]:
        fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
        tests = [fmt(r["test"].get(f"{p}/rsum")) for p in pairs] or [fmt(r["test"].get("rsum"))]
        accepted = sum(x["accepted"] for x in r["sites"])
        table.add_row(
            str(r["round"]),
            r["status"] + (f" ({r['reason']})" if r["reason"] else ""),
            fmt(r["val_rsum"]),
            *tests,
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['seconds']:.1f}",
            f"{accepted}/{len(r['sites'])}",
        )
    console.print(table)
    for r in details["rounds"]:
        for x in r["sites"]:
            if not x["accepted"]:
                console.print(f"round {r['round']}: {x['site']} dropped: {x['reason']}")
    for e in details["events"]:
        console.print(f"{e['at']} {e['kind']}: {e['message']}")
