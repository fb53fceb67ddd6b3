"""Same seed, same engine, same numbers: ``cream+`` and ``centralized`` on the openclipart
benchmark's federation (shortened), against ``tests/pinned``."""

from __future__ import annotations

import json

import pytest
from pinning import OPENCLIPART_METHODS, PINNED, differences, run_cases


@pytest.fixture(scope="module")
def openclipart_numbers(
    mmfl_home, openclipart_root, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict]:
    """Both openclipart cases, one after another in one child process."""
    return run_cases("openclipart", OPENCLIPART_METHODS, tmp_path_factory.mktemp("pinned-openclipart"))


@pytest.mark.slow
@pytest.mark.parametrize("method", OPENCLIPART_METHODS)
def test_openclipart_numbers_are_pinned(openclipart_numbers: dict[str, dict], method: str) -> None:
    pinned = json.loads((PINNED / f"openclipart-{method.replace('+', 'plus')}.json").read_text())
    assert len(pinned) > 30
    assert differences(pinned, openclipart_numbers[method]) == []
