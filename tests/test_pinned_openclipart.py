"""Same seed, same engine, same numbers: ``cream+`` and ``centralized`` on the openclipart
benchmark's federation (shortened), against ``tests/pinned``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pinning import OPENCLIPART_METHODS, PINNED, differences, run_case


@pytest.mark.slow
@pytest.mark.parametrize("method", OPENCLIPART_METHODS)
def test_openclipart_numbers_are_pinned(mmfl_home, openclipart_root, tmp_path: Path, method: str) -> None:
    pinned = json.loads((PINNED / f"openclipart-{method.replace('+', 'plus')}.json").read_text())
    assert len(pinned) > 30
    assert differences(pinned, run_case("openclipart", method, tmp_path / "run")) == []
