"""Built-in real data sets, prepared into manifests plus a stated split (see
:mod:`mmfl.data.prepared` for the folder format)."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mmfl.data.prepared import PreparedDataset, has_dataset_info
from mmfl.errors import DataSetMissing, MmflError
from mmfl.paths import data_root


def _preparers() -> dict[str, Callable[..., PreparedDataset]]:
    from mmfl.data.builtin import digits, openclipart

    return {"digits": digits.prepare, "openclipart": openclipart.prepare}


BUILTIN = ("digits", "openclipart")


def prepare(name: str, out: Path | None = None, force: bool = False, **kwargs: object) -> PreparedDataset:
    """Prepare built-in data set ``name`` into ``out`` (default: the data cache).

    The files are written into a staging folder beside ``out`` and moved into place in one
    rename, under a lock: a reader never sees a half-written set, a failed or killed preparation
    leaves nothing at ``out``, and processes preparing the same set at once wait for the first."""
    preparers = _preparers()
    if name not in preparers:
        raise MmflError(f"unknown data set {name!r} (built-in: {', '.join(BUILTIN)})")
    # Absolute: the rows' file paths are written relative to the set's folder, which a relative
    # staging folder would not be (the set then named files inside the removed staging folder).
    root = (Path(out).expanduser() if out else data_root() / name).resolve()
    if has_dataset_info(root) and not force:
        return PreparedDataset(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if has_dataset_info(root) and not force:  # another process prepared it while we waited
            return PreparedDataset(root)
        if root.exists() and not has_dataset_info(root) and any(root.iterdir()):
            raise MmflError(f"{root} exists and is not a prepared data set: give an empty or a new folder")
        staging = root.parent / f".{root.name}.staging-{os.getpid()}"  # unique: we hold the lock
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            preparers[name](staging, **kwargs)
            _move_into_place(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return PreparedDataset(root)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root``'s preparation (a lock file beside it)."""
    with (root.parent / f".{root.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename ``staging`` to ``root``; a previous set there (``force``) is moved aside first and
    removed after."""
    if root.exists() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        staging.rename(root)
        return
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    root.rename(old)
    staging.rename(root)
    shutil.rmtree(old, ignore_errors=True)


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
