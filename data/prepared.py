"""Prepared data sets: a folder holding ``dataset.json`` (:class:`DatasetInfo`) and one
manifest per split: ``public.jsonl`` (shared by coordinator and sites), ``private.jsonl`` (the
pool partitioned across sites in simulation), ``val.jsonl`` (hyper-parameter choice) and
``test.jsonl`` (held-out evaluation).

:func:`read_dataset_info` is the one reader of ``dataset.json``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mmfl.data.manifest import Manifest, load_manifest
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text

SPLITS = ("public", "private", "val", "test")
INFO_FILE = "dataset.json"


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


def has_dataset_info(folder: Path) -> bool:
    """Whether ``folder`` holds a ``dataset.json`` (written last: a complete preparation)."""
    return (Path(folder) / INFO_FILE).exists()


def read_dataset_info(folder: Path) -> DatasetInfo:
    """The ``dataset.json`` of ``folder``; a missing, unreadable or invalid file raises an
    :class:`MmflError` with a one-line message."""
    path = Path(folder) / INFO_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MmflError(f"{folder} is not a prepared data set (no {INFO_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MmflError(f"cannot read {path}: {exc}") from None
    try:
        return DatasetInfo.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise MmflError(f"invalid {path}: {problems}") from None


def write_info(root: Path, info: DatasetInfo) -> None:
    """Write ``dataset.json`` last and atomically: its presence marks a complete preparation."""
    atomic_write_text(root / INFO_FILE, info.model_dump_json(indent=2))


class PreparedDataset:
    """A prepared data set folder; manifests are validated on first access."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.info = read_dataset_info(root)

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


def info_summary(ds: PreparedDataset) -> dict[str, object]:
    """Counts per split and modality (for ``mmfl data info`` and tests)."""
    out: dict[str, object] = {"name": ds.info.name, "root": str(ds.root)}
    for split in SPLITS:
        m = ds.manifest(split)
        out[split] = {"rows": len(m), **{mod: m.count(mod) for mod in ds.info.modalities}}
    return json.loads(json.dumps(out))
