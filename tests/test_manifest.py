"""Manifest validation: every kind of bad row is refused by line; good manifests load whole."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfl.data.manifest import load_manifest, write_manifest
from mmfl.data.sample import Sample
from mmfl.errors import ManifestError


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    np.save(tmp_path / "a.npy", np.ones((12, 13), np.float32))
    np.save(tmp_path / "nan.npy", np.full((5, 13), np.nan, np.float32))
    np.save(tmp_path / "flat.npy", np.ones(13, np.float32))
    np.save(tmp_path / "mfcc20.npy", np.ones((12, 20), np.float32))
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    (tmp_path / "clip.m4a").write_bytes(b"\x00" * 64)
    return tmp_path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_good_jsonl_loads_every_row(files: Path) -> None:
    rows = [
        {"id": "s1", "image": "a.png", "text": "a grey square", "label": "x", "group": "p1"},
        {"id": "s2", "image": "b.png", "audio": "a.npy", "label": 3},
        {"id": "s3", "text": "text only"},
    ]
    m = load_manifest(write_jsonl(files / "m.jsonl", rows))
    assert [s.id for s in m.samples] == ["s1", "s2", "s3"]
    assert m.modalities == ("image", "text", "audio")
    assert m.samples[0].values["image"] == str(files / "a.png")
    assert m.samples[1].label == "3" and m.samples[0].group == "p1"
    assert (m.count("image"), m.count("text"), m.count("audio")) == (2, 2, 1)


def test_good_csv_loads_every_row(files: Path) -> None:
    path = files / "m.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "image", "text", "label"])
        w.writeheader()
        w.writerow({"id": "1", "image": "a.png", "text": "hello", "label": "x"})
        w.writerow({"id": "2", "image": "", "text": "only text", "label": "y"})
    m = load_manifest(path)
    assert len(m) == 2 and not m.samples[1].has("image")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"image": "missing.png"}, "image file not found"),
        ({"image": "broken.png"}, "unreadable image broken.png"),
        ({"text": "   "}, "empty text"),
        ({"xray": "a.png"}, "unknown modality column 'xray'"),
        ({"label": "x"}, "no modality present"),
        ({"audio": "nan.npy"}, "contains NaN"),
        ({"audio": "flat.npy"}, "is not (frames, coefficients)"),
        ({"audio": "a.png"}, "unsupported format .png (use .npy, .wav, .flac, .ogg, .mp3)"),
        ({"audio": "clip.m4a"}, "unsupported format .m4a"),
        ({"audio": "mfcc20.npy"}, "20 coefficients per frame; mmfl's audio encoders take 13"),
        ({"audio": "broken.wav"}, "unreadable audio broken.wav"),
        ({"text": 5}, "text must be a string"),
    ],
)
def test_each_kind_of_bad_row_is_refused_naming_the_line(files: Path, row: dict, expected: str) -> None:
    rows = [{"id": "ok1", "text": "fine"}, {"id": "bad", **row}, {"id": "ok2", "text": "fine too"}]
    with pytest.raises(ManifestError) as info:
        load_manifest(write_jsonl(files / "m.jsonl", rows))
    message = str(info.value)
    assert "line 2 (id bad)" in message and expected in message
    assert "ok1" not in message and "ok2" not in message
    assert "\n" not in message


def test_all_bad_rows_are_named_and_counted(files: Path) -> None:
    rows = [{"id": f"r{i}", "image": f"gone{i}.png"} for i in range(12)] + [{"id": "ok", "text": "t"}]
    with pytest.raises(ManifestError, match=r"12 bad rows: line 1 \(id r0\).*and 4 more"):
        load_manifest(write_jsonl(files / "m.jsonl", rows))


def test_duplicate_ids_missing_labels_and_modality_restrictions(files: Path) -> None:
    dup = write_jsonl(files / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(ManifestError, match="line 2: id 'a' repeats line 1"):
        load_manifest(dup)
    unlabeled = write_jsonl(
        files / "u.jsonl", [{"id": "a", "text": "x", "label": "c"}, {"id": "b", "text": "y"}]
    )
    with pytest.raises(ManifestError, match=r"line 2 \(id b\): missing label"):
        load_manifest(unlabeled, require_label=True)
    with pytest.raises(ManifestError, match="modality 'text' is not used here"):
        load_manifest(unlabeled, modalities=["image"])


def test_malformed_files_are_refused_in_one_line(files: Path) -> None:
    bad_json = files / "bad.jsonl"
    bad_json.write_text('{"text": "a"}\n{not json\n')
    with pytest.raises(ManifestError, match="line 2 is not JSON"):
        load_manifest(bad_json)
    with pytest.raises(ManifestError, match="unsupported format"):
        load_manifest(files / "a.png")
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(files / "nope.jsonl")
    empty = files / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ManifestError, match="has no rows"):
        load_manifest(empty)


def test_write_then_load_round_trips_with_relative_paths(files: Path) -> None:
    samples = [
        Sample("x1", {"image": str(files / "a.png"), "text": "ä caption"}, "lab", "g"),
        Sample("x2", {"audio": str(files / "a.npy")}, None, None),
    ]
    out = write_manifest(files / "sub" / ".." / "out.jsonl", samples, relative_to=files)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["image"] == "a.png"
    loaded = load_manifest(out)
    assert [s.values for s in loaded.samples] == [s.values for s in samples]
    assert [s.label for s in loaded.samples] == ["lab", None]
    assert not list(files.glob("*.tmp"))


def test_a_confined_manifest_refuses_files_outside_its_root(files: Path, tmp_path_factory) -> None:
    """F6: a public set chosen by the coordinator may not point a site at its private files."""
    public = files / "public"
    public.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(public / "ok.png")
    (public / "inside.png").symlink_to(public / "ok.png")
    (public / "escape.png").symlink_to(files / "a.png")  # a link out of the folder
    elsewhere = tmp_path_factory.mktemp("private") / "secret.png"
    Image.fromarray(np.ones((8, 8), np.uint8)).save(elsewhere)
    good = write_jsonl(
        public / "good.jsonl", [{"id": "a", "image": "ok.png"}, {"id": "b", "image": "inside.png"}]
    )
    assert len(load_manifest(good, root=public)) == 2
    for cell in ("../a.png", str(elsewhere), "escape.png", "sub/../../b.png"):
        bad = write_jsonl(public / "bad.jsonl", [{"id": "a", "image": "ok.png"}, {"id": "x", "image": cell}])
        with pytest.raises(ManifestError, match=rf"line 2 \(id x\): image file .* lies outside {public}"):
            load_manifest(bad, root=public)
        assert len(load_manifest(bad, check_files=False)) == 2  # unconfined, as before


def test_a_site_refuses_a_public_set_reaching_outside_its_folder(digits, tmp_path: Path) -> None:
    root = digits.root
    from mmfl.client.agent import validate_inputs
    from mmfl.config import SiteConfig

    public_dir = tmp_path / "public"
    public_dir.mkdir()
    (public_dir / "dataset.json").write_text((root / "dataset.json").read_text())
    private = tmp_path / "site" / "data.jsonl"
    private.parent.mkdir()
    rows = [json.loads(line) for line in (root / "private.jsonl").read_text().splitlines()[:20]]
    for r in rows:
        r["image"] = str(root / r["image"]) if "image" in r else None
    write_jsonl(private, [{k: v for k, v in r.items() if v is not None and k != "audio"} for r in rows])
    # A hostile public manifest names the site's own private image by a relative path.
    write_jsonl(
        public_dir / "public.jsonl",
        [{"id": "p", "image": os.path.relpath(rows[0]["image"], public_dir), "text": "zero", "label": "0"}],
    )
    config = SiteConfig.model_validate(
        {
            "site": {"id": "s", "modalities": ["image"], "architectures": {"image": "mlp"}},
            "manifest": str(private),
            "public_manifest": str(public_dir / "public.jsonl"),
            "data_root": str(root),
            "state_dir": str(tmp_path / "state"),
        }
    )
    with pytest.raises(ManifestError, match="lies outside"):
        validate_inputs(config)
    # The site's own manifest is confined to its data root, by default its own folder.
    with pytest.raises(ManifestError, match=rf"lies outside {private.parent}"):
        validate_inputs(
            config.model_copy(update={"data_root": None, "public_manifest": root / "public.jsonl"})
        )
    assert "20 private samples" in validate_inputs(
        config.model_copy(update={"public_manifest": root / "public.jsonl"})
    )
