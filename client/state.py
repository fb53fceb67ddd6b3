"""The site's state folder: its models between rounds, written atomically.

Flower's ``Context.state`` lives in SuperNode memory and dies with it; a site's model, privacy
ledger and audit log must survive restarts, so they live here, on the site's disk::

    models/RUN/round-NNNN.pt   the model after each round of a run (the newest few are kept)
    model.json                 the newest snapshot's metadata, for people and for checks
    site.secret                the key of the site's data fingerprint (never leaves the site)
    privacy/                   the privacy ledger (see ledger.py)
    audit.jsonl                one line per message that left the site (see audit.py)

A round r of run R starts from the snapshot of the newest earlier round of R, so a coordinator
that repeats a round after a crash gets the same result as if it had not crashed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfl.files import atomic_write_bytes

KEEP_SNAPSHOTS = 3
_ROUND = re.compile(r"^round-(\d{4,})\.pt$")


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120] or "run"


class SiteState:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.meta_path = self.root / "model.json"

    def _run_dir(self, run_id: str) -> Path:
        return self.root / "models" / _safe(run_id)

    def snapshots(self, run_id: str) -> list[tuple[int, Path]]:
        folder = self._run_dir(run_id)
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ROUND.match(p.name))]
        return sorted(found)

    def load_model(
        self, model: nn.Module, architectures: dict[str, str], run_id: str, before_round: int | None = None
    ) -> dict[str, Any] | None:
        """Load the newest snapshot of ``run_id`` older than ``before_round`` into ``model``;
        returns its metadata (``round``, ``dp``, ...), or None when there is none and the model
        keeps its initial weights.

        Saved weights of other architectures are refused rather than silently ignored.
        """
        candidates = [(r, p) for r, p in self.snapshots(run_id) if before_round is None or r < before_round]
        if not candidates:
            return None
        _, path = candidates[-1]
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = saved["meta"]
        if meta.get("architectures") != architectures:
            raise ValueError(
                f"state folder {self.root} holds a model of architectures {meta.get('architectures')}, not {architectures}"
            )
        model.load_state_dict(saved["state"])
        return dict(meta)

    def save_model(
        self, model: nn.Module, round_: int, architectures: dict[str, str], run_id: str, extra: dict[str, Any]
    ) -> None:
        meta = {"round": round_, "run_id": run_id, "architectures": architectures, **extra}
        buffer = io.BytesIO()
        torch.save(
            {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, buffer
        )
        folder = self._run_dir(run_id)
        atomic_write_bytes(folder / f"round-{round_:04d}.pt", buffer.getvalue())
        for _, old in self.snapshots(run_id)[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)
        atomic_write_bytes(self.meta_path, json.dumps(meta, indent=2).encode())

    def trained_with_dp(self) -> bool:
        """Whether the newest snapshot was trained with DP."""
        return self.meta_path.exists() and bool(
            json.loads(self.meta_path.read_text(encoding="utf-8")).get("dp")
        )

    def secret(self) -> bytes:
        """The site's own 256-bit secret (``site.secret``, mode 0600), made on first use; it
        keys the data fingerprint the site shows to others."""
        path = self.root / "site.secret"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".secret")  # mode 0600 from the start
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(os.urandom(32))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, path)  # the first writer wins; a concurrent one reads its key
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        return path.read_bytes()

    def keyed_fingerprint(self, fingerprint: str) -> str:
        """``HMAC-SHA256(secret, fingerprint)``: the same for the same data at this site, so the
        coordinator can tell whether a site's data changed, but useless for testing a guess of
        the data (the plain content hash would be)."""
        return hmac.new(self.secret(), fingerprint.encode(), hashlib.sha256).hexdigest()
