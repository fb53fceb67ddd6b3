"""The run store on a SQLite file and on a real PostgreSQL server: same code, same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from helpers import as_json, small_spec
from mmfl.server.records import RoundRecord, ServerMetrics, SiteReport
from mmfl.server.store import (
    CheckpointRow,
    EventRow,
    LastRound,
    RoundRow,
    Run,
    RunStatus,
    RunStore,
    SiteRoundRow,
    SiteRow,
    open_store,
)
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    engine = open_store(url)
    with engine.begin() as conn:  # a clean slate per test
        for table in ("site_rounds", "rounds", "checkpoints", "events", "sites", "runs"):
            conn.execute(text(f"DELETE FROM {table}"))
    return url


def test_migrations_create_the_schema(store_url: str) -> None:
    engine = open_store(store_url)
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "rounds", "site_rounds", "sites", "checkpoints", "events", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"


def test_a_run_is_recorded_and_read_back(store_url: str) -> None:
    store = RunStore(open_store(store_url), "run-1")
    store.start("name", "cream", "digits", 3, {"rounds": 2, "nested": {"a": [1, 2]}}, "/out")
    store.add_site("site-a", {"modalities": ["image"], "samples": {"image": 10}})
    sites = [
        SiteReport(
            site_id="site-a",
            node_id=1,
            accepted=True,
            bytes_down=3 * 2**31,
            bytes_up=10,
            epsilon=1.5,
            metrics={"loss": float("nan")},
        ),
        SiteReport(site_id="site-b", node_id=2, reason="NaN in image", bytes_down=5),
    ]
    store.add_round(
        RoundRecord(round=1, wall_seconds=2.5, server=ServerMetrics(test={"rsum": 123.4}), sites=sites)
    )
    store.add_round(RoundRecord(round=2, status="failed", reason="0 sites accepted", wall_seconds=1.0))
    store.add_checkpoint(1, "/out/checkpoints/round-0001.pt", "ab" * 32)
    store.event("site-refused", "site-c: fingerprint differs")
    store.finish("completed-with-failed-rounds", {"retrieval": {"rsum": 123.4}})
    with Session(open_store(store_url)) as s:
        run = s.get(Run, "run-1")
        assert (
            run is not None
            and run.status == "completed-with-failed-rounds"
            and run.config["nested"]["a"] == [1, 2]
        )
        assert run.finished_at is not None and run.final_metrics == {"retrieval": {"rsum": 123.4}}
        rounds = s.scalars(select(RoundRow).order_by(RoundRow.round)).all()
        assert [(r.round, r.status) for r in rounds] == [(1, "completed"), (2, "failed")]
        assert rounds[0].bytes_down == 3 * 2**31 + 5 and rounds[0].metrics["test"]["rsum"] == 123.4
        participation = s.scalars(select(SiteRoundRow).order_by(SiteRoundRow.site_id)).all()
        assert [(p.site_id, p.accepted, p.epsilon) for p in participation] == [
            ("site-a", True, 1.5),
            ("site-b", False, None),
        ]
        assert participation[0].metrics == {"loss": None} and participation[1].reason == "NaN in image"
        assert s.scalars(select(CheckpointRow)).one().sha256 == "ab" * 32
        assert s.scalars(select(EventRow)).one().kind == "site-refused"
        assert s.scalars(select(SiteRow)).one().capabilities["samples"] == {"image": 10}
    assert [r.round for r in store.rounds()] == [1, 2]
    summary = RunStatus(
        run_id="run-1",
        status="completed-with-failed-rounds",
        strategy="cream",
        rounds=2,
        last_round=LastRound(round=2, status="failed", rsum=None),
        epsilon={"site-a": 1.5},
    )
    assert store.status() == summary
    assert RunStore.recent(open_store(store_url)) == [summary]
    assert RunStore(open_store(store_url), "never-started").status() is None


def test_a_simulation_writes_to_the_store(store_url: str, digits, tmp_path: Path) -> None:
    plan = build_plan(small_spec("rounds=1", "strategy=mean"), tmp_path / "run", store=store_url)
    summary = as_json(run_inprocess(plan))
    with Session(open_store(store_url)) as s:
        run = s.get(Run, plan.run_id)
        assert run is not None and run.status == "completed"
        assert run.final_metrics["retrieval"]["rsum"] == pytest.approx(summary["final"]["retrieval"]["rsum"])
        assert len(s.scalars(select(SiteRoundRow)).all()) == 4


def test_a_run_that_stops_on_an_error_is_recorded_as_failed_not_running(
    store_url: str, digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round after the first raises (as a bug or a full disk would): the store says
    "failed" with the error, and the error still reaches the caller."""
    from mmfl.server.rounds.pipeline import RoundPipeline

    real = RoundPipeline.run

    def second_round_breaks(self, r: int):  # noqa: ANN001, ANN202
        if r == 2:
            raise OSError(28, "No space left on device")
        return real(self, r)

    monkeypatch.setattr(RoundPipeline, "run", second_round_breaks)
    plan = build_plan(small_spec("rounds=2", "strategy=server-only"), tmp_path / "run", store=store_url)
    with pytest.raises(OSError, match="No space left"):
        run_inprocess(plan)
    with Session(open_store(store_url)) as s:
        run = s.get(Run, plan.run_id)
        assert run is not None and run.status == "failed" and run.finished_at is not None
        assert run.final_metrics == {"error": "OSError: [Errno 28] No space left on device"}
        events = s.scalars(select(EventRow).where(EventRow.run_id == plan.run_id)).all()
        assert [e.message for e in events if e.kind == "failed"] == [
            "OSError: [Errno 28] No space left on device"
        ]
    assert RunStore(open_store(store_url), plan.run_id).status().status == "failed"


def test_a_store_made_before_migrations_is_refused_untouched(tmp_path: Path) -> None:
    import sqlite3

    from mmfl.errors import MmflError

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")
        db.execute("INSERT INTO runs VALUES ('r1')")
    with pytest.raises(MmflError, match="no migration record"):
        open_store(path)
    with sqlite3.connect(path) as db:  # nothing was changed
        assert db.execute("SELECT id FROM runs").fetchall() == [("r1",)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"runs"}


@pytest.mark.parametrize("damage", ["truncated", "tables dropped", "deleted"])
def test_a_damaged_store_is_refused_never_recreated(tmp_path: Path, damage: str) -> None:
    """Issue 35, defect 5: ``runs.sqlite`` truncated to 0 bytes was silently rebuilt by a read
    command (exit 0, an empty history, every site's epsilon record gone)."""
    import sqlite3

    from helpers import mmfl_cli
    from mmfl.errors import MmflError

    path = tmp_path / "runs.sqlite"
    RunStore(open_store(path), "r1").start("a", "cream", "digits", 0, {}, str(tmp_path))
    if damage == "truncated":
        path.write_bytes(b"")
    elif damage == "tables dropped":
        with sqlite3.connect(path) as db:
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                db.execute(f"DROP TABLE {name}")
    else:
        path.unlink()
    before = path.read_bytes() if path.exists() else None
    done = mmfl_cli("runs", "list", str(path))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert str(path) in line and ("restore it from a backup" in line or damage == "deleted")
    assert (path.read_bytes() if path.exists() else None) == before  # nothing written
    if damage != "deleted":  # a writer refuses the damaged file too; a missing one it creates
        with pytest.raises(MmflError, match="restore it from a backup"):
            open_store(f"sqlite:///{path}")


def test_runs_show_takes_a_unique_prefix_or_the_run_folder(store_url: str, tmp_path: Path) -> None:
    """Issue 36: `mmfl runs show` needed the exact id; a unique prefix or the run's folder now
    names a run, an ambiguous prefix lists the candidates, and LIKE's wildcards stay literal."""
    import json

    from mmfl.errors import MmflError
    from mmfl.server.runs_cli import resolve_run

    engine = open_store(store_url)
    for run_id in ("demo-regress-s0-1", "demo-regress-s1-2", "demoXregress"):
        RunStore(engine, run_id).start("demo", "regress", "digits", 0, {}, str(tmp_path))
    assert resolve_run("demo-regress-s1", store_url) == (store_url, "demo-regress-s1-2")
    assert resolve_run("demo-regress-s0-1", store_url) == (store_url, "demo-regress-s0-1")
    with pytest.raises(
        MmflError, match=r"^2 runs start with 'demo-regress': demo-regress-s0-1, demo-regress-s1-2;"
    ):
        resolve_run("demo-regress", store_url)
    with pytest.raises(MmflError, match="no run 'demo_r'"):  # '_' is not a wildcard
        resolve_run("demo_r", store_url)
    folder = tmp_path / "a-run"
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps({"run_id": "demoXregress"}))
    assert resolve_run(str(folder), store_url) == (store_url, "demoXregress")


def test_submit_wait_follows_a_run_to_its_end_and_fails_on_a_failed_run(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``mmfl server run submit --wait``: a line per finished round as ``rounds.jsonl`` grows,
    the delivery line once ``summary.json`` is there, and an error (exit 1) for a run the store
    records as failed."""
    from helpers import tiny_summary
    from mmfl.config import DaemonConfig
    from mmfl.errors import MmflError
    from mmfl.server.cli import follow_run
    from mmfl.server.daemon import init_server

    layout = init_server(tmp_path / "srv", DaemonConfig())
    out = layout.runs / "r1"
    out.mkdir(parents=True)
    round_line = {"event": "round", "round": 1, "status": "completed", "server": {"test": {"rsum": 42.0}},
                  "sites": [{"accepted": True}, {"accepted": False}]}  # fmt: skip
    (out / "rounds.jsonl").write_text(json.dumps(round_line) + "\n" + '{"event": "round", "rou')  # one half-written
    summary = tiny_summary("regress", 0, [(10.0, 42.0)])
    (out / "summary.json").write_text(summary.to_json())
    follow_run(layout, "r1", out, timeout=30)
    shown = capsys.readouterr().out
    assert "round 1 completed: 1/2 sites, test rsum 42.0" in shown and shown.count("round 1") == 1
    assert "run r1 completed" in shown  # no delivery recorded: nothing was compared

    store = RunStore(open_store(layout.store()), "r2")
    store.start("r2", "regress", "digits", 0, {}, str(layout.runs / "r2"))
    store.finish("failed", {"error": "OSError: disk full"})
    (layout.runs / "r2").mkdir()
    with pytest.raises(MmflError, match=r"^run r2 failed \(mmfl runs show r2"):
        follow_run(layout, "r2", layout.runs / "r2", timeout=30)
