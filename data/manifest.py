"""Manifests: one row per sample, a column per modality, optional ``label`` and ``group``.

A manifest is a CSV or JSONL file. ``image`` and ``audio`` cells hold file paths (relative to
the manifest's folder or absolute); ``text`` cells hold the text itself. An empty cell means the
sample lacks that modality. Loading validates every row before returning anything: one bad row
refuses the whole manifest with a :class:`ManifestError` that names the rows.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmfl.data.audio import check_audio_file
from mmfl.data.fingerprint import manifest_fingerprint
from mmfl.data.sample import FILE_MODALITIES, Sample
from mmfl.errors import ManifestError
from mmfl.files import atomic_write_text
from mmfl.modalities import MODALITIES

RESERVED_COLUMNS = ("id", "label", "group")
MAX_ERRORS_SHOWN = 8


@dataclass
class Manifest:
    """A validated manifest. Row order is meaningful: public-set indices refer to it."""

    path: Path | None
    samples: list[Sample]
    modalities: tuple[str, ...]
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[str | None]:
        return [s.label for s in self.samples]

    def count(self, modality: str) -> int:
        """Number of samples that hold ``modality``."""
        return sum(1 for s in self.samples if s.has(modality))

    def subset(self, indices: Sequence[int]) -> Manifest:
        return Manifest(self.path, [self.samples[i] for i in indices], self.modalities)

    def joined(self, other: Manifest) -> Manifest:
        """This manifest's rows, then ``other``'s (a public set and its unpaired pool); the
        fingerprint covers both, in that order."""
        modalities = tuple(dict.fromkeys([*self.modalities, *other.modalities]))
        return Manifest(self.path, [*self.samples, *other.samples], modalities)

    def fingerprint(self) -> str:
        """Content hash of rows and files (see :mod:`mmfl.data.fingerprint`); cached."""
        if self._fingerprint is None:
            self._fingerprint = manifest_fingerprint(self.samples, self.path)
        return self._fingerprint


def _decoded(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is refused naming its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"manifest {path}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _read_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(line number, raw row) pairs from a CSV or JSONL file."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict[str, object]]] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(_decoded(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"manifest {path}: line {lineno} is not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"manifest {path}: line {lineno} is not a JSON object")
            rows.append((lineno, obj))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_decoded(path), newline=""))
        if not reader.fieldnames:
            raise ManifestError(f"manifest {path}: no header row")
        try:
            for row in reader:
                rows.append((reader.line_num, {k: v for k, v in row.items() if k is not None}))
        except csv.Error as exc:
            raise ManifestError(f"manifest {path}: line {reader.line_num}: {exc}") from None
    else:
        raise ManifestError(f"manifest {path}: unsupported format {suffix!r} (use .csv or .jsonl)")
    return rows


def _check_image(path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and w * h > limit:
                return f"image {path.name} is too large ({w}x{h} pixels)"
            im.verify()
    except FileNotFoundError:
        return f"image file not found: {path}"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f"unreadable image {path.name}: {type(exc).__name__}"
    return None


def _validate_row(
    lineno: int,
    raw: dict[str, object],
    base: Path,
    allowed: Sequence[str],
    check_files: bool,
    root: Path | None = None,
) -> tuple[Sample | None, list[str]]:
    problems: list[str] = []
    values: dict[str, str] = {}
    for key, cell in raw.items():
        if key in RESERVED_COLUMNS:
            continue
        if key not in MODALITIES:
            problems.append(f"unknown modality column {key!r}")
            continue
        if cell is None or (isinstance(cell, str) and cell == ""):
            continue  # this sample lacks that modality
        if not isinstance(cell, str):
            problems.append(f"{key} must be a string, got {type(cell).__name__}")
            continue
        if key not in allowed:
            problems.append(f"modality {key!r} is not used here (allowed: {', '.join(allowed)})")
            continue
        if key == "text":
            if not cell.strip():
                problems.append("empty text")
                continue
            values[key] = cell
            continue
        file_path = Path(cell)
        if not file_path.is_absolute():
            file_path = base / file_path
        if root is not None and not file_path.resolve().is_relative_to(root):
            problems.append(f"{key} file {cell} lies outside {root} (symlinks followed)")
            continue
        if check_files:
            problem = _check_image(file_path) if key == "image" else check_audio_file(file_path)
            if problem:
                problems.append(problem)
                continue
        values[key] = str(file_path)
    if not values and not problems:
        problems.append("no modality present")
    label = raw.get("label")
    if label is not None and not isinstance(label, str | int):
        problems.append(f"label must be text or an integer, got {type(label).__name__}")
    label_text = None if label in (None, "") else str(label)
    group = raw.get("group")
    group_text = None if group in (None, "") else str(group)
    sample_id = str(raw.get("id") or f"row{lineno}")
    if problems:
        return None, [f"line {lineno} (id {sample_id[:60]}): " + ", ".join(problems)]
    return Sample(sample_id, values, label_text, group_text), []


def load_manifest(
    path: str | Path,
    modalities: Sequence[str] | None = None,
    require_label: bool = False,
    check_files: bool = True,
    root: Path | None = None,
) -> Manifest:
    """Validate every row of ``path`` and return the manifest, or raise naming the bad rows.

    ``modalities`` restricts the allowed modality columns (default: all known modalities).
    ``require_label`` refuses rows without a label. With ``root``, a file that resolves
    (``..`` and symlinks followed) outside that folder is a bad row: a site confines the public
    set, which a coordinator chose, to its folder, so that it never encodes a private file.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    allowed = tuple(modalities) if modalities else MODALITIES
    base = path.resolve().parent
    root = root.resolve() if root is not None else None
    raw_rows = _read_rows(path)
    if not raw_rows:
        raise ManifestError(f"manifest {path} has no rows")
    samples: list[Sample] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in raw_rows:
        sample, problems = _validate_row(lineno, raw, base, allowed, check_files, root)
        if sample is not None:
            if require_label and sample.label is None:
                problems = [f"line {lineno} (id {sample.id[:60]}): missing label"]
            elif sample.id in seen:
                problems = [f"line {lineno}: id {sample.id!r} repeats line {seen[sample.id]}"]
            else:
                seen[sample.id] = lineno
                samples.append(sample)
        errors.extend(problems)
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"; and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        # Cells are the manifest author's text: escape control characters so this stays one line.
        shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown)
        raise ManifestError(f"manifest {path} refused, {len(errors)} bad rows: {shown}{more}")
    present = tuple(m for m in MODALITIES if any(s.has(m) for s in samples))
    return Manifest(path, samples, present)


def write_manifest(path: str | Path, samples: Iterable[Sample], relative_to: Path | None = None) -> Path:
    """Write samples as JSONL atomically (see :func:`~mmfl.files.atomic_write_text`). Paths are
    made relative to ``relative_to`` (default: the manifest's folder) when they lie below it."""
    path = Path(path)
    base = (relative_to or path.parent).resolve()
    lines: list[str] = []
    for s in samples:
        row: dict[str, str] = {"id": s.id}
        for modality, value in s.values.items():
            if modality in FILE_MODALITIES:
                p = Path(value)
                value = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
            row[modality] = value
        if s.label is not None:
            row["label"] = s.label
        if s.group is not None:
            row["group"] = s.group
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
    return path
