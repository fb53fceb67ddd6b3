"""The documentation's examples run as written.

A shell block in ``README.md`` or ``docs/*.md`` preceded by a marker

    <!-- example: NAME; expect: TEXT | TEXT ... -->

is run verbatim by bash (``set -e``) in an empty temporary folder, with ``mmfl`` on the path
and the tests' data home; the run must succeed and its output hold every expected text (the
claims the page makes about what the commands show). A marker without a block after it, or a
page that names an example twice, fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"<!-- example: (?P<name>[\w-]+)(?:; expect: (?P<expect>.*?))? -->\n```bash\n(?P<code>.*?)```", re.S
)


def examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        blocks = list(MARKER.finditer(text))
        assert len(blocks) == text.count("<!-- example: "), (
            f"{page.name}: a marker is not followed by a bash block"
        )
        for m in blocks:
            expect = [e.strip() for e in (m["expect"] or "").split("|") if e.strip()]
            found.append((f"{page.name}:{m['name']}", m["code"], expect))
    names = [n for n, _, _ in found]
    assert len(names) == len(set(names)), "an example name is used twice"
    return found


def test_the_examples_are_found() -> None:
    assert "adaptation.md:adaptation" in [n for n, _, _ in examples()]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code", "expect"), examples(), ids=[n for n, _, _ in examples()])
def test_an_example_runs_as_written(name: str, code: str, expect: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, f"{name} failed: {done.stderr[-2000:]}"
    for text in expect:
        assert " ".join(text.split()) in said, f"{name}: the page says the output shows {text!r}"
