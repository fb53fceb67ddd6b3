"""The run store: runs, rounds, site participation, metrics, bytes, privacy spent, checkpoints,
events. SQLAlchemy 2 ORM; a SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from mmfl.errors import MmflError
from mmfl.server.records import RoundRecord


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(40))
    dataset: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(40), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_dir: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    rounds: Mapped[list[RoundRow]] = relationship(back_populates="run", order_by="RoundRow.round")


class SiteRow(Base):
    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    site_id: Mapped[str] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON)


class RoundRow(Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text, default="")
    wall_seconds: Mapped[float] = mapped_column(Float)
    bytes_down: Mapped[int] = mapped_column(BigInteger)
    bytes_up: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run: Mapped[Run] = relationship(back_populates="rounds")
    sites: Mapped[list[SiteRoundRow]] = relationship(back_populates="round_row")


class SiteRoundRow(Base):
    __tablename__ = "site_rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    site_id: Mapped[str] = mapped_column(String(64))
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    bytes_down: Mapped[int] = mapped_column(BigInteger)
    bytes_up: Mapped[int] = mapped_column(BigInteger)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    round_row: Mapped[RoundRow] = relationship(back_populates="sites")


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)


def store_url(value: str | Path) -> str:
    """A SQLAlchemy URL: a path becomes a SQLite file URL."""
    text = str(value)
    return text if "://" in text else f"sqlite:///{Path(text).resolve()}"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (``server/migrations``)."""
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    tables = set(inspect(engine).get_table_names())
    if tables and "alembic_version" not in tables:
        raise MmflError(
            f"run store {engine.url.render_as_string(hide_password=True)} has tables but no migration "
            "record (made before mmfl used Alembic); move it aside and let mmfl create a new one"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(files("mmfl.server") / "migrations"))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


_migrated: set[str] = set()


def open_store(url: str | Path, create: bool = True) -> Engine:
    """Connect and migrate the schema (once per URL and process). SQLite waits for locks
    instead of failing, since a simulation and a status command may share the file.

    A SQLite store is born whole: made and migrated under a temporary name, then linked into
    place, so that no reader ever sees a file without its schema. A store file that exists but
    is empty or holds no mmfl schema is therefore damage (truncated, overwritten): it is
    refused, never silently recreated, since it held the runs and each site's privacy record.
    ``create=False`` (read commands): a missing SQLite store is refused too."""
    full = store_url(url)
    if full.startswith("sqlite:///"):
        path = Path(full.removeprefix("sqlite:///"))
        if not path.exists() and not create:
            raise MmflError(
                f"no run store at {path} (a coordinator's is made by `mmfl server init`, a simulation's "
                "by its run); if one was there, restore it from a backup"
            )
        if path.parent.is_dir() and not path.exists():
            _create_sqlite(path)
        elif path.exists():
            _check_sqlite(path)
    connect_args = {"timeout": 60} if full.startswith("sqlite") else {}
    engine = create_engine(full, future=True, connect_args=connect_args)
    if full not in _migrated:
        migrate(engine)
        _migrated.add(full)
    return engine


def _create_sqlite(path: Path) -> None:
    """A new, migrated store at ``path`` (owner-only from its first byte); if another process
    made it meanwhile, theirs is kept."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    os.close(os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        engine = create_engine(f"sqlite:///{temporary}", future=True)
        migrate(engine)
        engine.dispose()
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_sqlite(path: Path) -> None:
    restore = "restore it from a backup, or move it aside to start an empty store on purpose"
    if path.stat().st_size == 0:
        raise MmflError(f"run store {path} is empty (0 bytes): it was truncated; {restore}")
    with path.open("rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise MmflError(f"run store {path} is not a SQLite database; {restore}")
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:  # (tables without a migration record: refused by migrate())
        raise MmflError(f"run store {path} holds no tables (its schema is gone); {restore}")


def _identity(row: SiteRow) -> str:
    """A stored site's identity (rows written before identities were kept: its name)."""
    return str(row.capabilities.get("identity") or f"site:{row.site_id}")


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LastRound:
    """A run's newest round: its number, outcome and test R-sum (None when not evaluated)."""

    round: int
    status: str
    rsum: float | None


@dataclass(frozen=True)
class RunStatus:
    """One run as ``mmfl server status`` lists it (its store rows; the run folder holds its ``summary.json``)."""

    run_id: str
    status: str
    strategy: str
    rounds: int
    last_round: LastRound | None
    epsilon: dict[str, float]  # site -> the epsilon it reported last


def _summarize(session: Session, run: Run) -> RunStatus:
    rounds = session.scalars(select(RoundRow).where(RoundRow.run_id == run.id).order_by(RoundRow.round)).all()
    eps: dict[str, float] = {}
    for row in rounds:
        for sr in session.scalars(select(SiteRoundRow).where(SiteRoundRow.round_id == row.id)):
            if sr.epsilon is not None:
                eps[sr.site_id] = sr.epsilon
    last = rounds[-1] if rounds else None
    return RunStatus(
        run_id=run.id,
        status=run.status,
        strategy=run.strategy,
        rounds=len(rounds),
        last_round=None
        if last is None
        else LastRound(
            round=last.round, status=last.status, rsum=(last.metrics.get("test") or {}).get("rsum")
        ),
        epsilon=eps,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, allow_nan=True).replace("NaN", "null"))


class RunStore:
    """Writes one run's records; each call is its own transaction."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id

    def start(
        self, name: str, strategy: str, dataset: str, seed: int, config: dict[str, Any], output_dir: str
    ) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(
                Run(
                    id=self.run_id,
                    name=name,
                    strategy=strategy,
                    dataset=dataset,
                    seed=seed,
                    status="running",
                    config=_jsonable(config),
                    output_dir=output_dir,
                )
            )

    def add_site(self, site_id: str, capabilities: dict[str, Any]) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(SiteRow(run_id=self.run_id, site_id=site_id, capabilities=_jsonable(capabilities)))

    def _declared(self, identity: str, since: datetime | None) -> dict[str, dict[str, Any]]:
        """The capabilities this identity declared, by run, in runs started after ``since``."""
        with Session(self.engine) as s:
            query = select(SiteRow, Run.started_at).join(Run, SiteRow.run_id == Run.id)
            return {
                row.run_id: row.capabilities
                for row, started in s.execute(query).all()
                if _identity(row) == identity and (since is None or _aware(started) >= since)
            }

    def lowest_budget(self, identity: str, since: datetime | None = None) -> tuple[float, str] | None:
        """The smallest privacy budget the site with this identity declared in any run of this
        store started after ``since``, and where; a budget above it was raised."""
        budgets = [
            (float(caps["privacy"]["target_epsilon"]), f"when run {run_id} started")
            for run_id, caps in self._declared(identity, since).items()
            if (caps.get("privacy") or {}).get("enabled") and caps["privacy"].get("target_epsilon")
        ]
        return min(budgets, default=None)

    def highest_epsilon(self, identity: str, since: datetime | None = None) -> tuple[float, str] | None:
        """The most privacy the site with this identity (its registered key, or in a simulation
        its name: :meth:`~mmfl.server.sites.SiteRegistry.identity`) ever reported, in any run of
        this store started after ``since`` (an operator's acknowledgement), and where. A site's
        ledger spans its data sets, so its spend never goes back, whatever data it holds now."""
        best: tuple[float, str] | None = None
        runs = self._declared(identity, since)
        with Session(self.engine) as s:
            for run_id, caps in runs.items():
                declared = float((caps.get("privacy") or {}).get("epsilon_spent") or 0.0)
                if best is None or declared > best[0]:
                    best = (declared, f"when run {run_id} started")
            if not runs:
                return None
            site_ids = {c.get("site_id") for c in runs.values()}
            rows = s.execute(
                select(SiteRoundRow.epsilon, RoundRow.run_id, RoundRow.round, SiteRoundRow.site_id)
                .join(RoundRow, SiteRoundRow.round_id == RoundRow.id)
                .where(RoundRow.run_id.in_(runs), SiteRoundRow.site_id.in_(site_ids))
                .where(SiteRoundRow.epsilon.is_not(None))
            ).all()
            for eps, run_id, round_, _ in rows:
                if best is None or eps > best[0]:
                    best = (float(eps), f"in run {run_id} round {round_}")
        return best

    def add_round(self, record: RoundRecord) -> None:
        """Record a round and each contacted site's part in it."""
        with Session(self.engine) as s, s.begin():
            row = RoundRow(
                run_id=self.run_id,
                round=record.round,
                status=record.status,
                reason=record.reason,
                wall_seconds=record.wall_seconds,
                bytes_down=record.bytes_down,
                bytes_up=record.bytes_up,
                metrics=_jsonable(record.server_metrics()),
            )
            s.add(row)
            s.flush()
            for x in record.sites:
                s.add(
                    SiteRoundRow(
                        round_id=row.id,
                        site_id=x.site_id,
                        accepted=x.accepted,
                        reason=x.reason,
                        bytes_down=x.bytes_down,
                        bytes_up=x.bytes_up,
                        epsilon=x.epsilon,
                        metrics=_jsonable(x.metrics),
                    )
                )

    def add_checkpoint(self, round_: int, path: str, sha256: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(CheckpointRow(run_id=self.run_id, round=round_, path=path, sha256=sha256))

    def checkpoint_digest(self, round_: int) -> str | None:
        """The SHA-256 recorded for this run's checkpoint of ``round_`` (the newest record)."""
        with Session(self.engine) as s:
            row = s.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.run_id == self.run_id, CheckpointRow.round == round_)
                .order_by(CheckpointRow.id.desc())
            ).first()
            return None if row is None else row.sha256

    def event(self, kind: str, message: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(EventRow(run_id=self.run_id, kind=kind, message=message))

    def finish(self, status: str, final_metrics: dict[str, Any]) -> None:
        with Session(self.engine) as s, s.begin():
            run = s.get(Run, self.run_id)
            assert run is not None
            run.status, run.finished_at, run.final_metrics = status, utcnow(), _jsonable(final_metrics)

    def rounds(self) -> list[RoundRow]:
        with Session(self.engine) as s:
            return list(
                s.scalars(select(RoundRow).where(RoundRow.run_id == self.run_id).order_by(RoundRow.round))
            )

    def status(self) -> RunStatus | None:
        """This run's status; None when it was never started."""
        with Session(self.engine) as s:
            run = s.get(Run, self.run_id)
            return None if run is None else _summarize(s, run)

    @staticmethod
    def recent(engine: Engine, limit: int = 10) -> list[RunStatus]:
        """The ``limit`` most recently started runs of the store, newest first."""
        with Session(engine) as s:
            runs = s.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit))
            return [_summarize(s, run) for run in runs]
