"""Same seed, same engine, same numbers: every method on digits, against ``tests/pinned``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pinning import DIGITS_METHODS, PINNED, differences, run_case


@pytest.mark.slow
@pytest.mark.parametrize("method", DIGITS_METHODS)
def test_digits_numbers_are_pinned(digits, tmp_path: Path, method: str) -> None:
    pinned = json.loads((PINNED / f"digits-{method.replace('+', 'plus')}.json").read_text())
    assert len(pinned) > 30
    assert differences(pinned, run_case("digits", method, tmp_path / "run")) == []


def test_differences_sees_a_moved_number() -> None:
    pinned = {"a": 1.0, "b": "completed", "c": float("nan")}
    assert differences(pinned, dict(pinned)) == []
    assert differences(pinned, {**pinned, "a": 1.0 + 2e-6}) == ["a: pinned 1.0, now 1.000002"]
    assert differences(pinned, {"a": 1.0, "c": float("nan")}) == ["missing b"]
