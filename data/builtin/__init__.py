"""Built-in real data sets, prepared into manifests plus a stated split (see
:mod:`mmfl.data.prepared` for the folder format)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmfl.data.prepared import INFO_FILE, PreparedDataset, has_dataset_info
from mmfl.errors import DataSetMissing, MmflError
from mmfl.paths import data_root


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
    if has_dataset_info(root) and not force:
        return PreparedDataset(root)
    if has_dataset_info(root):
        (root / INFO_FILE).unlink()
    root.mkdir(parents=True, exist_ok=True)
    return preparers[name](root, **kwargs)


def open_dataset(name_or_path: str | Path, auto_prepare: bool = True) -> PreparedDataset:
    """A prepared data set by built-in name (prepared on first use) or by folder path."""
    path = Path(name_or_path)
    if has_dataset_info(path):
        return PreparedDataset(path)
    name = str(name_or_path)
    if name in BUILTIN:
        root = data_root() / name
        if has_dataset_info(root):
            return PreparedDataset(root)
        if auto_prepare:
            return prepare(name)
        raise DataSetMissing(f"data set {name!r} is not prepared: run `mmfl data prepare {name}`")
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        raise MmflError(
            f"{path} is a manifest, not a prepared data set: split it with "
            f"`mmfl data split {path} --out FOLDER` and give dataset = FOLDER"
        )
    if path.is_dir():
        raise MmflError(
            f"{path} has no dataset.json: make a prepared folder with `mmfl data split MANIFEST --out "
            "FOLDER` or `mmfl data init FOLDER --public P --private Q --val V --test T`"
        )
    raise MmflError(
        f"{name_or_path!s} is neither a built-in data set ({', '.join(BUILTIN)}) nor a prepared folder"
    )
