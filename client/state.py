"""The site's state folder: its model between rounds, written atomically.

Flower's ``Context.state`` lives in SuperNode memory and dies with it; a site's model, privacy
ledger and audit log must survive restarts, so they live here, on the site's disk.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfl.files import atomic_write_bytes


class SiteState:
    """``model.pt``: the weights with the round and architectures that wrote them (one file,
    replaced atomically); ``model.json`` repeats the metadata for people to read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.model_path = self.root / "model.pt"
        self.meta_path = self.root / "model.json"

    def load_model(self, model: nn.Module, architectures: dict[str, str]) -> int:
        """Load saved weights into ``model``; returns the round that saved them (0 if none).

        Saved weights of other architectures are refused rather than silently ignored.
        """
        if not self.model_path.exists():
            return 0
        saved = torch.load(self.model_path, map_location="cpu", weights_only=True)
        meta = saved["meta"]
        if meta.get("architectures") != architectures:
            raise ValueError(
                f"state folder {self.root} holds a model of architectures {meta.get('architectures')}, "
                f"not {architectures}"
            )
        model.load_state_dict(saved["state"])
        return int(meta["round"])

    def save_model(
        self, model: nn.Module, round_: int, architectures: dict[str, str], extra: dict[str, Any]
    ) -> None:
        meta = {"round": round_, "architectures": architectures, **extra}
        buffer = io.BytesIO()
        torch.save(
            {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, buffer
        )
        atomic_write_bytes(self.model_path, buffer.getvalue())
        atomic_write_bytes(self.meta_path, json.dumps(meta, indent=2).encode())
