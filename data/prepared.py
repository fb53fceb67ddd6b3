"""Prepared data sets: a folder holding ``dataset.json`` (:class:`DatasetInfo`, published as
the JSON Schema ``mmfl/schemas/dataset.schema.json``) and one manifest per split:
``public.jsonl`` (shared by coordinator and sites), ``private.jsonl`` (the pool partitioned
across sites in simulation), ``val.jsonl`` (hyper-parameter choice) and ``test.jsonl``
(held-out evaluation); ``mmfl data split`` may add ``sites/<id>.jsonl``, one manifest per site.
An optional ``pool.jsonl`` holds the *unpaired public pool*: public rows that hold one modality
only (images without texts, texts without images), appended after ``public.jsonl``'s rows when a
federation uses it (:meth:`PreparedDataset.public_set`). Its rows never repeat a val or test row.

:func:`read_dataset_info` is the one reader of ``dataset.json``; :func:`write_prepared` the one
writer of a whole folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmfl.data.fingerprint import item_fingerprint
from mmfl.data.manifest import Manifest, load_manifest, write_manifest
from mmfl.data.sample import FILE_MODALITIES, Sample
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text, staged_folder
from mmfl.modalities import Modality

SPLITS = ("public", "private", "val", "test")
POOL = "pool"
INFO_FILE = "dataset.json"


class DatasetInfo(BaseModel):
    """What ``dataset.json`` states about a prepared data set."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="the data set's name")
    description: str = ""
    modalities: list[Modality] = Field(min_length=1, description="modalities its manifests may hold")
    classes: list[str] = Field(
        default_factory=list,
        description="label values in class-head order; empty for unlabeled data (no class heads)",
    )
    pairing: Literal["class", "instance"] = Field(
        "instance",
        description="instance: a row's items belong together (image-caption); class: items of "
        "the same label match (needs labels)",
    )
    image_size: int = Field(64, ge=8, le=1024, description="images are fitted into this square")
    image_channels: Literal[1, 3] = 3
    splits: dict[str, int] = Field(default_factory=dict, description="rows per split (informative)")
    source: dict[str, str] = Field(default_factory=dict, description="where each modality came from")
    notes: list[str] = []
    format_version: Literal[1] = 1

    @model_validator(mode="after")
    def _check(self) -> DatasetInfo:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes repeat a value")
        if self.pairing == "class" and not self.classes:
            raise ValueError("pairing 'class' needs a class list (and a label on every row)")
        return self


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
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
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
        out = {}
        for split in SPLITS:
            path = self.root / f"{split}.jsonl"
            manifest = load_manifest(path, self.info.modalities, require_label=self.info.pairing == "class")
            check_labels(manifest, self.info.classes)
            out[split] = manifest
        return out

    def check(self) -> None:
        """Validate every split's rows and labels now (they are otherwise read on first use)."""
        for split in SPLITS:
            self.manifest(split)
        if self.has_pool:
            self.pool  # noqa: B018 - loaded and checked now

    @property
    def has_pool(self) -> bool:
        """Whether the folder holds an unpaired public pool (``pool.jsonl``)."""
        return (self.root / f"{POOL}.jsonl").exists()

    @cached_property
    def pool(self) -> Manifest:
        """The unpaired public pool, checked: no row of it repeats a val or test row (by
        :func:`~mmfl.data.fingerprint.sample_key`: content, or group id)."""
        pool = load_manifest(self.root / f"{POOL}.jsonl", self.info.modalities)
        check_labels(pool, self.info.classes)
        check_pool(pool, [self.manifest("val"), self.manifest("test")])
        return pool

    def public_set(self, with_pool: bool) -> Manifest:
        """The public set a federation shares: ``public.jsonl``'s rows, then (``with_pool`` and
        a pool present) the pool's; public-set indices refer to this order."""
        public = self.manifest("public")
        if not (with_pool and self.has_pool):
            return public
        return public.joined(self.pool)

    def class_index(self, label: str | None) -> int:
        """Position of ``label`` in the class list (-1 for an unlabeled sample)."""
        return -1 if label is None else self._class_positions[label]

    @cached_property
    def _class_positions(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.info.classes)}


def check_labels(manifest: Manifest, classes: Sequence[str]) -> None:
    """Every label of ``manifest`` is one of ``classes``; labels without a class list are refused."""
    known = set(classes)
    for lineno, sample in enumerate(manifest.samples, start=1):
        if sample.label is None or sample.label in known:
            continue
        if not classes:
            raise MmflError(
                f"manifest {manifest.path}: row {lineno} (id {sample.id}) has label {sample.label!r} "
                "but dataset.json lists no classes (add them, or drop the label column)"
            )
        raise MmflError(
            f"manifest {manifest.path}: row {lineno} (id {sample.id}) has label {sample.label!r}, "
            f"not one of dataset.json's {len(classes)} classes"
        )


def check_pool(pool: Manifest, held_out: Sequence[Manifest]) -> None:
    """Refuse a pool that holds an item of ``held_out`` (val, test), compared item by item (an
    image without its caption is still that image): what the methods distil on must never be
    what a model is chosen or scored on."""
    held = {
        (m, item_fingerprint(s, m)): (manifest.path, s.id)
        for manifest in held_out
        for s in manifest.samples
        for m in s.values
    }
    for lineno, sample in enumerate(pool.samples, start=1):
        for m in sample.values:
            hit = held.get((m, item_fingerprint(sample, m)))
            if hit is not None:
                raise MmflError(
                    f"manifest {pool.path}: row {lineno} (id {sample.id}) holds the {m} of row "
                    f"{hit[1]} of {hit[0]}; a public pool never holds a val or test item"
                )


def write_prepared(
    root: Path,
    parts: Mapping[str, Sequence[Sample]],
    info: DatasetInfo,
    sites: Mapping[str, Sequence[Sample]] | None = None,
    overwrite: bool = False,
) -> PreparedDataset:
    """Write a whole prepared folder (the four split manifests, ``sites/<id>.jsonl`` for each of
    ``sites``, ``dataset.json``) into a staging folder and rename it into place: a failure
    leaves nothing behind, and an existing folder is replaced only with ``overwrite``."""
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise MmflError(f"{root} already exists and is not empty; choose another --out or pass --force")
    missing = [s for s in SPLITS if not parts.get(s)]
    if missing:
        raise MmflError(f"the {missing[0]} split would be empty; give it rows")
    everything = [
        *(x for rows in parts.values() for x in rows),
        *(x for r in (sites or {}).values() for x in r),
    ]
    for sample in everything:
        for modality, value in sample.values.items():
            if modality in FILE_MODALITIES and Path(value).resolve().is_relative_to(root.resolve()):
                raise MmflError(f"{root} holds {value}, a file the manifests name; choose a new --out folder")
    with staged_folder(root) as staging:
        for split in SPLITS:
            write_manifest(staging / f"{split}.jsonl", parts[split])  # files keep absolute paths
        for site_id, rows in (sites or {}).items():
            write_manifest(staging / "sites" / f"{site_id}.jsonl", rows)
        info = info.model_copy(update={"splits": {s: len(parts[s]) for s in SPLITS}})
        write_info(staging, info)
        PreparedDataset(staging).check()  # every row and label checked before it goes live
    return PreparedDataset(root)


def dataset_schema() -> dict[str, object]:
    """The JSON Schema of ``dataset.json``."""
    return DatasetInfo.model_json_schema()


def info_summary(ds: PreparedDataset) -> dict[str, object]:
    """Counts per split and modality (for ``mmfl data info`` and tests)."""
    out: dict[str, object] = {"name": ds.info.name, "root": str(ds.root)}
    for split in (*SPLITS, POOL) if ds.has_pool else SPLITS:
        m = ds.pool if split == POOL else ds.manifest(split)
        out[split] = {"rows": len(m), **{mod: m.count(mod) for mod in ds.info.modalities}}
    return json.loads(json.dumps(out))
