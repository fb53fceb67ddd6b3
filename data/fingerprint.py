"""Content fingerprints: prove that two parties hold the same manifest and files.

A file's fingerprint is the SHA-256 of its bytes; a text's is the SHA-256 of the text. A
manifest's fingerprint hashes, in row order, each row's id, label, group and the fingerprints
of its items, so it is independent of where the files lie and changes when one byte of one file
changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mmfl.data.sample import FILE_MODALITIES, Sample
from mmfl.errors import ManifestError

_CHUNK = 1 << 20
_file_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _file_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    _file_cache[key] = value
    return value


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_fingerprint(sample: Sample, modality: str) -> str:
    """Fingerprint of one sample's item of one modality (the feature-cache key)."""
    value = sample.values[modality]
    return file_sha256(value) if modality in FILE_MODALITIES else text_sha256(value)


def manifest_fingerprint(samples: Sequence[Sample], path: Path | None) -> str:
    """SHA-256 over every row of the manifest at ``path``: id, label, group and the item
    fingerprints, in row order."""
    digest = hashlib.sha256(b"mmfl-manifest-v1\n")
    for sample in samples:
        try:
            items = {m: item_fingerprint(sample, m) for m in sorted(sample.values)}
        except OSError as exc:
            raise ManifestError(
                f"manifest {path}: sample {sample.id}: {exc.strerror}: {exc.filename}"
            ) from None
        row = {"id": sample.id, "label": sample.label, "group": sample.group, "items": items}
        digest.update(json.dumps(row, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def sample_key(sample: Sample) -> str:
    """A row's identity for splits: its group id when it has one (a patient's rows share it),
    else a hash of its content (label and item fingerprints), independent of row order, file
    location and the other rows."""
    if sample.group is not None:
        return f"group:{sample.group}"
    items = {m: item_fingerprint(sample, m) for m in sorted(sample.values)}
    return "row:" + text_sha256(json.dumps({"label": sample.label, "items": items}, sort_keys=True))
