"""Same seed, same engine, same numbers: every method on digits, against ``tests/pinned``."""

from __future__ import annotations

import json

import pytest
from pinning import DIGITS_METHODS, PINNED, differences, run_cases


@pytest.fixture(scope="module")
def digits_numbers(digits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every digits case, run one after another in one child process (as ``run_case`` runs one)."""
    return run_cases("digits", DIGITS_METHODS, tmp_path_factory.mktemp("pinned-digits"))


@pytest.mark.slow
@pytest.mark.parametrize("method", DIGITS_METHODS)
def test_digits_numbers_are_pinned(digits_numbers: dict[str, dict], method: str) -> None:
    pinned = json.loads((PINNED / f"digits-{method.replace('+', 'plus')}.json").read_text())
    assert len(pinned) > 30
    assert differences(pinned, digits_numbers[method]) == []


def test_differences_sees_a_moved_number() -> None:
    pinned = {"a": 1.0, "b": "completed", "c": float("nan")}
    assert differences(pinned, dict(pinned)) == []
    assert differences(pinned, {**pinned, "a": 1.0 + 2e-6}) == ["a: pinned 1.0, now 1.000002"]
    assert differences(pinned, {"a": 1.0, "c": float("nan")}) == ["missing b"]
