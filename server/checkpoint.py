"""Checkpoints: everything needed to continue a run after the round that wrote them."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from mmfl.files import atomic_write_bytes


def save_checkpoint(directory: Path, round_: int, state: dict[str, Any], keep: int) -> tuple[Path, str]:
    """Write ``round-NNNN.pt`` atomically; prune all but the newest ``keep``. Returns (path, sha256)."""
    buffer = io.BytesIO()
    torch.save({"round": round_, **state}, buffer)
    data = buffer.getvalue()
    path = directory / f"round-{round_:04d}.pt"
    atomic_write_bytes(path, data)
    for old in sorted(directory.glob("round-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
