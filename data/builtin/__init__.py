"""Built-in real data sets, prepared into manifests plus a stated split.

A prepared data set is a folder holding ``dataset.json`` (:class:`DatasetInfo`) and one
manifest per split: ``public.jsonl`` (shared by coordinator and sites), ``private.jsonl`` (the
pool partitioned across sites in simulation), ``val.jsonl`` (hyper-parameter choice) and
``test.jsonl`` (held-out evaluation).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mmfl.data.manifest import Manifest, load_manifest
from mmfl.errors import DataSetMissing, MmflError
from mmfl.paths import data_root

SPLITS = ("public", "private", "val", "test")


class DatasetInfo(BaseModel):
    """What ``dataset.json`` states about a prepared data set."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    modalities: list[str]
    classes: list[str]
    pairing: Literal["class", "instance"]
    image_size: int
    image_channels: int
    splits: dict[str, int]
    source: dict[str, str]
    notes: list[str] = []
    format_version: int = 1


class PreparedDataset:
    """A prepared data set folder; manifests are validated on first access."""

    def __init__(self, root: Path) -> None:
        self.root = root
        info_path = root / "dataset.json"
        if not info_path.exists():
            raise MmflError(f"{root} is not a prepared data set (no dataset.json)")
        self.info = DatasetInfo.model_validate_json(info_path.read_text(encoding="utf-8"))

    def manifest(self, split: str) -> Manifest:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        return self._manifests[split]

    @cached_property
    def _manifests(self) -> dict[str, Manifest]:
        return {
            s: load_manifest(self.root / f"{s}.jsonl", self.info.modalities, require_label=True)
            for s in SPLITS
        }

    def class_index(self, label: str | None) -> int:
        """Position of ``label`` in the class list (-1 for an unlabeled sample)."""
        return -1 if label is None else self._class_positions[label]

    @cached_property
    def _class_positions(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.info.classes)}


def write_info(root: Path, info: DatasetInfo) -> None:
    """Write ``dataset.json`` last and atomically: its presence marks a complete preparation."""
    fd, tmp = tempfile.mkstemp(prefix="dataset.json", suffix=".tmp", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(info.model_dump_json(indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / "dataset.json")


def _preparers() -> dict[str, Callable[..., PreparedDataset]]:
    from mmfl.data.builtin import digits, openclipart

    return {"digits": digits.prepare, "openclipart": openclipart.prepare}


BUILTIN = ("digits", "openclipart")


def prepare(name: str, out: Path | None = None, force: bool = False, **kwargs: object) -> PreparedDataset:
    """Prepare built-in data set ``name`` into ``out`` (default: the data cache)."""
    preparers = _preparers()
    if name not in preparers:
        raise MmflError(f"unknown data set {name!r} (built-in: {', '.join(BUILTIN)})")
    root = Path(out) if out else data_root() / name
    if (root / "dataset.json").exists() and not force:
        return PreparedDataset(root)
    if (root / "dataset.json").exists():
        (root / "dataset.json").unlink()
    root.mkdir(parents=True, exist_ok=True)
    return preparers[name](root, **kwargs)


def open_dataset(name_or_path: str | Path, auto_prepare: bool = True) -> PreparedDataset:
    """A prepared data set by built-in name (prepared on first use) or by folder path."""
    path = Path(name_or_path)
    if (path / "dataset.json").exists():
        return PreparedDataset(path)
    name = str(name_or_path)
    if name in BUILTIN:
        root = data_root() / name
        if (root / "dataset.json").exists():
            return PreparedDataset(root)
        if auto_prepare:
            return prepare(name)
        raise DataSetMissing(f"data set {name!r} is not prepared: run `mmfl data prepare {name}`")
    raise MmflError(f"{name_or_path!s} is neither a built-in data set nor a prepared folder")


def info_summary(ds: PreparedDataset) -> dict[str, object]:
    """Counts per split and modality (for ``mmfl data info`` and tests)."""
    out: dict[str, object] = {"name": ds.info.name, "root": str(ds.root)}
    for split in SPLITS:
        m = ds.manifest(split)
        out[split] = {"rows": len(m), **{mod: m.count(mod) for mod in ds.info.modalities}}
    return json.loads(json.dumps(out))
