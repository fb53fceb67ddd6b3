"""A small image–caption collection laid out as a user's own data: ``mine.csv`` and ``scans/``.

``mmfl data example --out DIR`` writes it from the built-in OpenClipart set (real clip-art PNGs
with their captions and categories), so that the own-data walkthrough (``docs/own-data.md``) runs
as written before a user has files of their own. The items are an even draw, by id, over every
split of the prepared set; nothing else of the prepared set (its split, its public set) comes
along: ``mmfl data split`` makes a new one.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from mmfl.data.builtin import open_dataset
from mmfl.data.prepared import SPLITS
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text

MANIFEST = "mine.csv"
IMAGES = "scans"
DEFAULT_ITEMS = 420


def write_example(out: Path, items: int = DEFAULT_ITEMS, source: str = "openclipart") -> Path:
    """Copy ``items`` image–caption pairs of ``source`` into ``out/scans`` and list them in
    ``out/mine.csv`` (``id,image,text,label``); returns the manifest. An existing manifest or
    image folder in ``out`` is refused, never overwritten."""
    if items < 20:
        raise MmflError(f"--items {items}: an example needs at least 20 items to split into parts")
    manifest, images = out / MANIFEST, out / IMAGES
    for existing in (manifest, images):
        if existing.exists():
            raise MmflError(f"{existing} already exists; choose another --out")
    dataset = open_dataset(source)
    pairs = sorted(
        (
            s
            for split in SPLITS
            for s in dataset.manifest(split).samples
            if {"image", "text"} <= set(s.values)
        ),
        key=lambda s: s.id,
    )
    if len(pairs) < items:
        raise MmflError(f"{source} holds {len(pairs)} image-caption pairs, fewer than --items {items}")
    step = len(pairs) / items
    chosen = [pairs[int(k * step)] for k in range(items)]
    staging = out / f".{IMAGES}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "image", "text", "label"])
    for sample in chosen:
        name = f"{sample.id}{Path(sample.values['image']).suffix}"
        shutil.copyfile(sample.values["image"], staging / name)
        writer.writerow([sample.id, f"{IMAGES}/{name}", sample.values["text"], sample.label or ""])
    staging.rename(images)  # the images first: a manifest never names files that are not there
    atomic_write_text(manifest, text.getvalue())
    return manifest
