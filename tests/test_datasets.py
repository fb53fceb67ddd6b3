"""Built-in data sets are real, complete, stated, and split without leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfl.data.builtin import open_dataset, prepare
from mmfl.data.builtin.digits import WORDS, load_fsdd_mfcc, load_mnist_5k
from mmfl.data.builtin.openclipart import normalise
from mmfl.data.fingerprint import file_sha256
from mmfl.data.prepared import SPLITS, read_dataset_info
from mmfl.errors import DataSetMissing, MmflError


def test_digits_is_real_mnist_and_fsdd_paired_by_class(digits) -> None:
    images, image_labels = load_mnist_5k()
    audio, audio_labels = load_fsdd_mfcc()
    assert images.shape == (5000, 28, 28) and np.bincount(image_labels).tolist() == [500] * 10
    assert len(audio) == 3000 and np.bincount(audio_labels).tolist() == [300] * 10
    counts = {s: len(digits.manifest(s)) for s in SPLITS}
    assert counts == {"public": 1000, "private": 2500, "val": 500, "test": 1000} == digits.info.splits
    all_ids = [x.id for s in SPLITS for x in digits.manifest(s).samples]
    assert len(set(all_ids)) == 5000
    with_audio = 0
    for split in SPLITS:
        for sample in digits.manifest(split).samples[:200]:
            c = int(sample.label)
            assert sample.values["text"] == WORDS[c]
            mnist_index = int(Path(sample.values["image"]).stem.split("-")[1])
            assert image_labels[mnist_index] == c
            assert np.array_equal(np.asarray(Image.open(sample.values["image"])), images[mnist_index])
            if "audio" in sample.values:
                with_audio += 1
                fsdd_index = int(Path(sample.values["audio"]).stem.split("-")[1])
                assert audio_labels[fsdd_index] == c
                assert np.array_equal(np.load(sample.values["audio"]), audio[fsdd_index])
    assert with_audio > 300
    assert sum(digits.manifest(s).count("audio") for s in SPLITS) == 3000


def test_open_dataset_reuses_preparation(digits) -> None:
    again = open_dataset("digits")
    assert again.root == digits.root
    assert again.manifest("public").fingerprint() == digits.manifest("public").fingerprint()


def test_openclipart_split_is_clean(openclipart_root: Path, tmp_path: Path) -> None:
    ds = prepare("openclipart", tmp_path / "oc", source=openclipart_root)
    splits = read_dataset_info(tmp_path / "oc").splits
    manifests = {s: ds.manifest(s) for s in SPLITS}
    assert {s: len(m) for s, m in manifests.items()} == {s: n for s, n in splits.items() if s != "pool"}
    assert splits["test"] == 1000 and splits["val"] == 500
    assert splits["public"] == 1500 and splits["private"] > 1500
    assert len(ds.info.classes) == 22 and ds.info.pairing == "instance"
    # Rows point at the real installed files.
    for s in manifests["test"].samples[:50]:
        assert s.values["image"].startswith(str(openclipart_root / "png"))
        assert Path(s.values["image"]).is_file()
    # No byte-identical image twice anywhere.
    hashes = [file_sha256(s.values["image"]) for m in manifests.values() for s in m.samples]
    assert len(hashes) == len(set(hashes))
    # Every val/test caption is unique across the whole prepared set: one right answer per query.
    caption_counts = Counter(normalise(s.values["text"]) for m in manifests.values() for s in m.samples)
    for split in ("val", "test"):
        assert all(caption_counts[normalise(s.values["text"])] == 1 for s in manifests[split].samples)
    # Repeated captions are capped in the pools.
    assert max(caption_counts.values()) <= 100
    # The images the cap leaves out are the unpaired public pool: images only, no label, none of
    # them a val or test image (nor any other split's), as many as the notes say were left out.
    pool = ds.pool
    assert splits["pool"] == len(pool) > 1000
    assert f"({len(pool)} images left out;" in " ".join(ds.info.notes)
    assert all(set(s.values) == {"image"} and s.label is None for s in pool.samples)
    pooled = {file_sha256(s.values["image"]) for s in pool.samples}
    assert len(pooled) == len(pool) and not pooled & set(hashes)
    public = ds.public_set(with_pool=True)
    assert len(public) == 1500 + len(pool) and public.samples[1500:] == pool.samples


def test_openclipart_missing_files_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataSetMissing, match="apt-get install openclipart-png openclipart-svg"):
        prepare("openclipart", tmp_path / "x", source=tmp_path / "nothing")


def test_dataset_info_problems_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MmflError, match=r"is not a prepared data set \(no dataset.json\)"):
        read_dataset_info(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(MmflError, match="invalid .*dataset.json: ") as bad_json:
        read_dataset_info(tmp_path)
    (tmp_path / "dataset.json").write_text('{"name": "x", "pairing": "pairs"}')
    with pytest.raises(MmflError, match="pairing: ") as bad_field:
        read_dataset_info(tmp_path)
    assert "\n" not in str(bad_json.value) and "\n" not in str(bad_field.value)


OPEN_AND_READ_DIGITS = """
from mmfl.data.builtin import open_dataset
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import SPLITS
ds = open_dataset("digits")
print(sum(len(load_manifest(ds.root / f"{s}.jsonl", check_files=True)) for s in SPLITS))
"""


def test_digits_appears_whole_or_not_at_all_while_two_processes_prepare_it(tmp_path: Path) -> None:
    """Two first runs on one fresh MMFL_HOME, the second half a second after the first: each
    prepares digits on first use, then reads every file of every split. Watched every few
    milliseconds meanwhile, the data set's folder is absent or complete (dataset.json written
    last), never partial; the second process waits for the first; both read the whole set.
    (Before, files appeared one by one in place, and a run read a recording another run was
    still rewriting: EOFError.)"""
    env = {**os.environ, "MMFL_HOME": str(tmp_path / "home")}
    root = tmp_path / "home" / "data" / "digits"

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_READ_DIGITS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [start()]
    seen: set[str] = set()
    started = time.monotonic()
    while any(p.poll() is None for p in procs) or len(procs) < 2:
        if len(procs) < 2 and time.monotonic() - started > 0.5:
            procs.append(start())
        seen.add(
            "absent" if not root.exists() else "whole" if (root / "dataset.json").exists() else "partial"
        )
        time.sleep(0.005)
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in results]
    assert [out.split()[-1] for out, _ in results] == ["5000", "5000"]
    assert seen == {"absent", "whole"}
    leftovers = sorted(p.name for p in root.parent.iterdir())
    assert leftovers == [".digits.lock", "digits"]  # no staging folder left behind


def test_a_failed_preparation_leaves_nothing_at_the_target(tmp_path: Path) -> None:
    with pytest.raises(DataSetMissing):
        prepare("openclipart", tmp_path / "oc", source=tmp_path / "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".oc.lock"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MmflError, match="mine exists and is not a prepared data set"):
        prepare("digits", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_set_prepared_into_a_relative_folder_names_its_own_files(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """`mmfl data prepare digits --out digits` (a relative folder, as the adaptation example runs
    it) wrote rows naming files inside the staging folder, removed once the set moved into place."""
    from mmfl.data.prepared import PreparedDataset

    monkeypatch.chdir(tmp_path)
    ds = prepare("digits", Path("digits"))
    assert ds.root == tmp_path / "digits"
    PreparedDataset(Path("digits")).check()  # every row's file exists
    first = (tmp_path / "digits" / "public.jsonl").read_text().splitlines()[0]
    assert '"image": "images/' in first and "staging" not in first


def test_the_own_data_example_is_real_openclipart_laid_out_as_a_users_files(
    openclipart_root: Path, tmp_path: Path
) -> None:
    """``mmfl data example``: the images are the prepared set's files, byte for byte, each row's
    caption and category are its own, the draw is the same every time, and nothing is
    overwritten."""
    from mmfl.data.example import write_example
    from mmfl.data.manifest import load_manifest

    manifest = load_manifest(write_example(tmp_path / "a", items=40))
    assert len(manifest) == 40 and manifest.modalities == ("image", "text")
    source = {s.id: s for split in SPLITS for s in open_dataset("openclipart").manifest(split).samples}
    for sample in manifest.samples:
        original = source[sample.id]
        assert file_sha256(Path(sample.values["image"])) == file_sha256(Path(original.values["image"]))
        assert Path(sample.values["image"]).parent == tmp_path / "a" / "scans"
        assert (sample.values["text"], sample.label) == (original.values["text"], original.label)
    again = load_manifest(write_example(tmp_path / "b", items=40))
    assert [s.id for s in again.samples] == [s.id for s in manifest.samples]
    before = (tmp_path / "a" / "mine.csv").read_bytes()
    with pytest.raises(MmflError, match=r"mine\.csv already exists; choose another --out$"):
        write_example(tmp_path / "a", items=40)
    assert (tmp_path / "a" / "mine.csv").read_bytes() == before
    with pytest.raises(MmflError, match="at least 20 items"):
        write_example(tmp_path / "c", items=5)
