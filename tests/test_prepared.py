"""Bring-your-own prepared folders: the published schema of dataset.json, one-line errors for every
malformed field or label, and ``mmfl data split`` / ``init`` writing whole folders or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import mmfl_cli
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import DatasetInfo, PreparedDataset, dataset_schema, read_dataset_info
from mmfl.data.sample import Sample
from mmfl.data.split import split_samples, units_of
from mmfl.errors import MmflError

GOOD = {"name": "mine", "modalities": ["image", "text"], "classes": ["cat", "dog"]}


def test_the_published_schema_is_the_one_the_code_reads() -> None:
    committed = json.loads(
        (Path(__file__).parents[1] / "mmfl" / "schemas" / "dataset.schema.json").read_text()
    )
    assert committed == dataset_schema()
    assert DatasetInfo.model_validate(GOOD).image_size == 64  # defaults fill the rest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "Invalid JSON"),
        (json.dumps({**GOOD, "name": None}), "name: Input should be a valid string"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "modalities"}), "modalities: Field required"),
        (json.dumps({**GOOD, "image_size": 0}), "image_size: Input should be greater than or equal to 8"),
        (json.dumps({**GOOD, "image_channels": 2}), "image_channels: Input should be 1 or 3"),
        (json.dumps({**GOOD, "pairing": "pairs"}), "pairing: Input should be 'class' or 'instance'"),
        (
            json.dumps({**GOOD, "modalities": ["video"]}),
            "modalities.0: Input should be 'image', 'text' or 'audio'",
        ),
        (json.dumps({**GOOD, "classes": ["a", "a"]}), "classes repeat a value"),
        (json.dumps({**GOOD, "classes": [], "pairing": "class"}), "pairing 'class' needs a class list"),
        (json.dumps({**GOOD, "colour": "blue"}), "colour: Extra inputs are not permitted"),
        (json.dumps({**GOOD, "format_version": 2}), "format_version: Input should be 1"),
    ],
)
def test_each_malformed_dataset_json_field_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(MmflError) as info:
        read_dataset_info(tmp_path)
    message = str(info.value)
    assert expected in message and str(tmp_path / "dataset.json") in message and "\n" not in message


def _folder(tmp_path: Path, info: dict, labels: list[str | None]) -> Path:
    rows = "".join(
        json.dumps({"id": f"r{i}", "text": f"text {i}", **({"label": lab} if lab is not None else {})}) + "\n"
        for i, lab in enumerate(labels)
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    for split in ("public", "private", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text(rows)
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    return tmp_path


def test_labels_are_optional_but_never_outside_the_class_list(tmp_path: Path) -> None:
    unlabeled = {**GOOD, "classes": [], "modalities": ["text"]}
    PreparedDataset(_folder(tmp_path / "a", unlabeled, [None, None])).check()  # no labels, no classes: fine
    PreparedDataset(_folder(tmp_path / "b", {**GOOD, "modalities": ["text"]}, ["cat", None])).check()
    with pytest.raises(
        MmflError, match=r"row 2 \(id r1\) has label 'cow', not one of dataset.json's 2 classes"
    ):
        PreparedDataset(_folder(tmp_path / "c", {**GOOD, "modalities": ["text"]}, ["cat", "cow"])).check()
    with pytest.raises(MmflError, match="has label 'cat' but dataset.json lists no classes"):
        PreparedDataset(_folder(tmp_path / "d", unlabeled, ["cat"])).check()


def test_a_latin1_manifest_is_refused_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes("id,text\n1,plain\n2,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(MmflError, match=r"line 3 is not UTF-8 \(byte 0xe9\)"):
        load_manifest(tmp_path / "m.csv")


def _samples(n: int, groups: int = 0) -> list[Sample]:
    return [
        Sample(
            f"s{i}",
            {"text": f"caption {i % (n - 3)}"},  # the last three texts repeat earlier ones
            "ab"[i % 2],
            f"g{i % groups}" if groups and i < 2 * groups else None,
        )
        for i in range(n)
    ]


def test_split_keeps_groups_whole_and_counts_units() -> None:
    samples = _samples(60, groups=5)  # five groups of two rows, 50 single rows: 55 units
    assert len(units_of(samples)) == 55
    parts = split_samples(samples, public=0.2, val=5, test=10, sites=3, seed=3)
    named = {"public": parts.public, "private": parts.private, "val": parts.val, "test": parts.test}
    where = {s.id: k for k, rows in named.items() for s in rows}
    assert sorted(where) == sorted(s.id for s in samples)  # each row exactly once
    for g in range(5):
        assert len({where[s.id] for s in samples if s.group == f"g{g}"}) == 1
    assert len({s.group or s.id for s in parts.public}) == 11  # 20 % of 55 units
    assert sorted(s.id for site in parts.sites for s in site) == sorted(s.id for s in parts.private)
    again = split_samples(samples, public=0.2, val=5, test=10, sites=3, seed=3)
    assert [s.id for s in again.test] == [s.id for s in parts.test]  # the seed fixes the split


def test_one_answer_evaluation_rows_have_texts_that_occur_once() -> None:
    samples = _samples(40)
    parts = split_samples(samples, public=0.3, val=8, test=10, one_answer=True)
    repeated = {f"caption {i}" for i in range(3)}
    assert not {s.values["text"] for s in parts.val + parts.test} & repeated
    with pytest.raises(
        MmflError, match=r"only 34 units with a text that occurs once \(--one-answer\); val \+ test need 40"
    ):
        split_samples(samples, public=0, val=20, test=20, one_answer=True)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"public": 30, "val": 10, "test": 10}, "exceed the manifest's 40 units"),
        ({"public": 2.5, "val": 1, "test": 1}, "a count must be a whole number"),
        ({"public": -0.1, "val": 1, "test": 1}, "cannot be negative"),
        ({"public": 0.2, "val": 1, "test": 1, "sites": 40}, "cannot give 40 sites"),
    ],
)
def test_impossible_splits_are_refused(kwargs: dict, expected: str) -> None:
    with pytest.raises(MmflError, match=expected):
        split_samples(_samples(40), **kwargs)


def test_dirichlet_sites_need_labels() -> None:
    unlabeled = [Sample(f"s{i}", {"text": f"t{i}"}) for i in range(40)]
    with pytest.raises(MmflError, match="--scheme dirichlet needs a label on every row"):
        split_samples(unlabeled, public=0.2, val=2, test=2, sites=2, scheme="dirichlet")


def test_data_split_writes_a_whole_folder_or_nothing(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), i * 8, np.uint8)).save(images / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"{i}.png", "text": f"grey level {i}"})
    (images / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prepared"
    done = mmfl_cli("data", "split", str(images / "m.jsonl"), "--out", str(out), "--val", "5", "--test", "5")
    assert done.returncode == 0, done.stderr
    info = read_dataset_info(out)
    assert info.classes == [] and info.pairing == "instance" and info.splits["test"] == 5
    assert load_manifest(out / "test.jsonl").samples[0].values["image"].startswith(str(images))
    done = mmfl_cli("data", "split", str(images / "m.jsonl"), "--out", str(out))
    assert done.returncode == 2 and "already exists and is not empty" in done.stderr
    # Refused before anything is written: the folder and its neighbours are as they were.
    before = sorted(p.name for p in tmp_path.iterdir())
    done = mmfl_cli("data", "split", str(images / "m.jsonl"), "--out", str(tmp_path / "new"), "--val", "40")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    done = mmfl_cli("data", "split", str(images / "m.jsonl"), "--out", str(images), "--force")
    assert done.returncode == 2 and "a file the manifests name" in done.stderr  # never deletes the data
    assert (images / "0.png").exists()

    done = mmfl_cli(
        "data", "init", str(tmp_path / "again"), "--public", str(out / "public.jsonl"),
        "--private", str(out / "private.jsonl"), "--val", str(out / "val.jsonl"), "--test", str(out / "test.jsonl"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_dataset_info(tmp_path / "again").splits == info.splits


def test_a_manifest_or_bare_folder_given_as_data_set_says_how_to_prepare_it(tmp_path: Path) -> None:
    from mmfl.data.builtin import open_dataset

    (tmp_path / "m.csv").write_text("id,text\n1,hello\n")
    with pytest.raises(
        MmflError, match=r"is a manifest, not a prepared data set: split it with `mmfl data split"
    ):
        open_dataset(tmp_path / "m.csv")
    with pytest.raises(MmflError, match="has no dataset.json: make a prepared folder"):
        open_dataset(tmp_path)
