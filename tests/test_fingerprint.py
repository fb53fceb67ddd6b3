"""Fingerprints are stable across processes and places, and change with one byte of one file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mmfl.data.manifest import load_manifest


def make_set(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(root / f"{i}.png")
    rows = [{"id": str(i), "image": f"{i}.png", "text": f"item {i}", "label": "c"} for i in range(3)]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "m.jsonl"


def fingerprint_in_new_process(path: Path) -> str:
    code = (
        "import sys; from mmfl.data.manifest import load_manifest; "
        "print(load_manifest(sys.argv[1]).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_stable_across_processes_and_locations(tmp_path: Path) -> None:
    path = make_set(tmp_path / "a")
    here = load_manifest(path).fingerprint()
    assert len(here) == 64
    assert fingerprint_in_new_process(path) == here
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert load_manifest(tmp_path / "b" / "m.jsonl").fingerprint() == here


def test_one_byte_of_one_file_changes_it(tmp_path: Path) -> None:
    path = make_set(tmp_path / "a")
    before = load_manifest(path).fingerprint()
    png = tmp_path / "a" / "1.png"
    data = bytearray(png.read_bytes())
    data[-1] ^= 0x01  # flip one bit of one byte
    png.write_bytes(bytes(data))
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint_in_new_process(path) != before
    assert load_manifest(path).fingerprint() != before


def test_rows_text_labels_and_order_matter(tmp_path: Path) -> None:
    path = make_set(tmp_path / "a")
    base = load_manifest(path).fingerprint()
    lines = path.read_text().splitlines()
    variants = {
        "order": [lines[1], lines[0], lines[2]],
        "text": [lines[0].replace("item 0", "item zero"), *lines[1:]],
        "label": [lines[0].replace('"c"', '"d"'), *lines[1:]],
    }
    seen = {base}
    for name, rows in variants.items():
        other = tmp_path / "a" / f"{name}.jsonl"
        other.write_text("\n".join(rows) + "\n")
        fp = load_manifest(other).fingerprint()
        assert fp not in seen, name
        seen.add(fp)
