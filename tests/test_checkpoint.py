"""Checkpoints load as data only (``weights_only``) and are refused when their recorded hash
differs (issue 13, item 3)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from helpers import as_json, small_spec
from mmfl.errors import MmflError
from mmfl.server.checkpoint import load_checkpoint
from mmfl.server.store import RunStore, open_store
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - what a hostile pickle does on load
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("strategy", ["cream+", "fedavgm"])
def test_real_checkpoints_load_as_data_and_a_changed_byte_is_refused(
    digits, tmp_path: Path, strategy: str
) -> None:
    summary = as_json(run_inprocess(build_plan(small_spec(f'strategy="{strategy}"'), tmp_path / "run")))
    newest = sorted((tmp_path / "run" / "checkpoints").glob("round-*.pt"))[-1]
    store = RunStore(open_store(tmp_path / "run" / "runs.sqlite"), summary["run_id"])
    digest = store.checkpoint_digest(2)
    assert digest == hashlib.sha256(newest.read_bytes()).hexdigest()
    state = load_checkpoint(newest, digest)
    assert state["round"] == 2 and len(state["records"]) == 2
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(MmflError, match="does not match the SHA-256 the run store recorded"):
        load_checkpoint(newest, digest)


def test_a_checkpoint_holding_code_is_refused(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "round-0001.pt"
    torch.save({"round": 1, "trainer": _Payload()}, path)
    with pytest.raises(MmflError, match="cannot be read"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"round": 1})[:5])
    with pytest.raises(MmflError, match="cannot be read"):
        load_checkpoint(path)
