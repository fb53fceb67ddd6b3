"""Checkpoints: everything needed to continue a run after the round that wrote them."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from mmfl.errors import MmflError
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


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """A checkpoint's state, loaded with ``weights_only=True`` (tensors and plain containers,
    never arbitrary objects). With ``expected_sha256`` (the run store's record) a file whose
    hash differs is refused: it was altered or truncated after it was written."""
    data = Path(path).read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise MmflError(f"checkpoint {path} does not match the SHA-256 the run store recorded for it")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise MmflError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0][:200]}") from None
