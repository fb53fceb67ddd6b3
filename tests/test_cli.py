"""The ``mmfl`` command: help on every sub-command; failures are one line with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def mmfl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmfl.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["data", "--help"], ["data", "prepare", "--help"], ["data", "validate", "--help"]]
)
def test_help(args: list[str]) -> None:
    out = mmfl(*args)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_bad_manifest_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,image,text\n1,nope.png,hello\n2,,\n")
    out = mmfl("data", "validate", str(tmp_path / "m.csv"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert (
        "line 2 (id 1): image file not found" in lines[0] and "line 3 (id 2): no modality present" in lines[0]
    )


def test_prepare_openclipart_writes_manifest_of_real_files(openclipart_root: Path, tmp_path: Path) -> None:
    out = mmfl(
        "data", "prepare", "openclipart", "--out", str(tmp_path / "oc"), "--source", str(openclipart_root)
    )
    assert out.returncode == 0, out.stderr
    assert "public" in out.stdout and "1500" in out.stdout and "test" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "oc" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1000
    assert all(Path(r["image"]).is_file() and r["text"].strip() and r["label"] for r in rows)
    check = mmfl("data", "validate", str(tmp_path / "oc" / "public.jsonl"), "--require-label")
    assert check.returncode == 0 and "ok: 1500 rows" in check.stdout


def test_unknown_data_set_is_refused() -> None:
    out = mmfl("data", "prepare", "cifar")
    assert out.returncode == 2 and "unknown data set 'cifar'" in out.stderr


def test_runs_on_a_damaged_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite").write_text("not a database at all, just text " * 40)
    out = mmfl("runs", "list", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mmfl: error: cannot read run store sqlite:///{(tmp_path / 'runs.sqlite').resolve()}: file is not a database"
    ]
    out = mmfl("runs", "list", str(tmp_path / "nothing-here"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_server_status_on_a_damaged_run_store_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    done = mmfl("server", "init", "--dir", str(folder), "--name", "localhost", "--ip", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    (folder / "runs.sqlite").write_text("not a database " * 50)
    out = mmfl("server", "status", "--dir", str(folder))
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("mmfl: error: cannot read the run store") and line.endswith(
        "file is not a database"
    )
