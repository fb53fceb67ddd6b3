"""A user's own data end to end, through the commands only: manifests of real files (PNG and JPEG
images, WAV / FLAC / OGG recordings decoded by libsndfile) -> ``mmfl data split`` -> ``mmfl
simulate`` with one manifest per site -> ``mmfl evaluate``, ``embed`` and ``export``; the
numbers each step reports agree."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

import mmfl
from helpers import mmfl_cli
from mmfl.data.manifest import load_manifest
from mmfl.inference.trained import load_eval_manifest

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "orange": (240, 140, 20)}
SHAPES = ["circle", "square"]
TONES = {"red": 300.0, "green": 550.0, "blue": 800.0, "orange": 1100.0}
AUDIO_FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")]


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _ok_err(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def make_files(folder: Path, n: int, audio: bool, seed: int = 0) -> list[dict[str, str]]:
    """``n`` items: a drawn shape (PNG or JPEG), a caption naming it, a recorded tone whose pitch
    follows the colour; the label is the colour. Every caption is distinct."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        img = Image.new("RGB", (40, 40), (255, 255, 255))
        x, y, r = (int(v) for v in rng.integers(8, 20, size=3))
        box = (x, y, x + r, y + r)
        draw = ImageDraw.Draw(img)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        name = f"img{i:03d}.{'jpg' if i % 3 == 0 else 'png'}"
        img.save(folder / name)
        row = {
            "id": f"item{i:03d}",
            "image": name,
            "text": f"a {colour} {shape}, drawing number {i}",
            "label": colour,
        }
        if audio:
            ext, subtype = AUDIO_FORMATS[i % len(AUDIO_FORMATS)]
            t = np.arange(int(0.6 * 16000)) / 16000
            wave = 0.4 * np.sin(2 * np.pi * TONES[colour] * t) + 0.05 * rng.normal(size=len(t))
            soundfile.write(folder / f"rec{i:03d}.{ext}", wave.astype(np.float32), 16000, subtype=subtype)
            row["audio"] = f"rec{i:03d}.{ext}"
        if i % 10 < 2:
            row["group"] = f"patient{i // 10}"  # rows 0-1, 10-11, ... come from one patient
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    columns = sorted({k for r in rows for k in r})
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def spec_text(data: Path, modalities: list[str], server: str, sites: list[tuple[str, str]]) -> str:
    lines = [
        'name = "own-data"',
        f'dataset = "{data}"',
        f"modalities = {json.dumps(modalities)}",
        "rounds = 2",
        'strategy = "cream+"',
        "embed_dim = 64",
        "[partition]",
        'scheme = "iid"',
        "[train]",
        "local_epochs = 1",
        "[server]",
        f"architectures = {server}",
        "epochs_per_round = 1",
    ]
    for i, (mods, archs) in enumerate(sites):
        lines += [
            "[[sites]]",
            f'id = "site-{i + 1}"',
            f"modalities = {mods}",
            f"architectures = {archs}",
            f'manifest = "{data / "sites" / f"site-{i + 1}.jsonl"}"',
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("audio", [False, True], ids=["image-caption", "image-audio-text"])
def test_own_manifest_split_simulate_evaluate_embed_export(tmp_path: Path, mmfl_home, audio: bool) -> None:
    rows = make_files(tmp_path / "files", 160, audio)
    if audio:
        manifest = tmp_path / "files" / "mine.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        manifest = tmp_path / "files" / "mine.csv"
        write_csv(manifest, rows)
    prepared = tmp_path / "prepared"
    _ok(mmfl_cli("data", "validate", str(manifest)))
    _ok(
        mmfl_cli(
            "data", "split", str(manifest), "--out", str(prepared), "--public", "0.3", "--val", "20",
            "--test", "30", "--sites", "3", "--one-answer", "--image-size", "32",
        )
    )  # fmt: skip
    info = json.loads((prepared / "dataset.json").read_text())
    mods = ["image", "text", "audio"] if audio else ["image", "text"]
    assert info["modalities"] == mods and info["classes"] == sorted(COLOURS)
    # 160 rows, 16 patients of two rows: 144 units; public is 30 % of them (43), val and test
    # are counts of single-row units
    assert (info["splits"]["val"], info["splits"]["test"]) == (20, 30)
    assert info["splits"]["public"] + info["splits"]["private"] == 110
    parts = {s: load_manifest(prepared / f"{s}.jsonl").samples for s in ("public", "private", "val", "test")}
    sites = [load_manifest(prepared / "sites" / f"site-{k}.jsonl").samples for k in (1, 2, 3)]
    assert sorted(s.id for p in parts.values() for s in p) == sorted(r["id"] for r in rows)
    assert sorted(s.id for p in sites for s in p) == sorted(s.id for s in parts["private"])
    where = {s.id: name for name, p in parts.items() for s in p}
    assert len({s.group or s.id for s in parts["public"]}) == 43
    for r in rows:  # a patient's rows never straddle two parts, and never reach val or test
        if "group" in r:
            partner = next(o for o in rows if o.get("group") == r["group"] and o["id"] != r["id"])
            assert where[r["id"]] == where[partner["id"]] and where[r["id"]] in ("public", "private")

    server = '{ image = "cnn-small", text = "bag"' + (', audio = "mfcc-mlp" }' if audio else " }")
    site_specs = [
        (json.dumps(mods), server),
        ('["image", "text"]', '{ image = "mlp", text = "bag" }'),
        ('["image"]', '{ image = "cnn-small" }'),
    ]
    (tmp_path / "spec.toml").write_text(spec_text(prepared, mods, server, site_specs))
    run = tmp_path / "run"
    spec = str(tmp_path / "spec.toml")
    done = mmfl_cli("simulate", "-c", spec, "--engine", "inprocess", "--out", str(run), "--no-controls")
    out = _ok(done)
    progress = _ok_err(done)  # no terminal: one plain line per round on stderr
    assert progress.splitlines()[0] == (
        "own-data: cream+ on "
        + str(prepared)
        + ", 3 sites, 2 rounds, seed 0: preparing the data and the plan"
    )
    assert "cream+ s0: round 1 completed" in progress and "cream+ s0: round 2 completed" in progress
    summary = json.loads((run / "summary.json").read_text())
    assert [s["id"] for s in summary["sites"]] == ["site-1", "site-2", "site-3"]
    held = {s["id"]: s["private_samples"] for s in summary["sites"]}
    assert set(held["site-3"]) == {"image"} and held["site-3"]["image"] > 0  # its modalities only
    final = summary["final"]["retrieval"]
    pairs = ["image-text", "image-audio", "text-audio"] if audio else ["image-text"]
    for pair in pairs:
        assert f"{pair}/rsum" in final  # every modality pair is measured
    assert f"{final['rsum']:.1f}" in out  # the terminal shows the headline number
    report = (run / "report.md").read_text()
    for pair in pairs:  # ... and every pair, as does the report
        assert f"final test retrieval {pair}: " in out and f"Test retrieval, {pair}:" in report
        assert f"{final[f'{pair}/rsum']:.1f}" in report
    if not audio:  # what follows reads the run back; checked once, on the three-modality run
        return
    assert "| test image-audio rsum | test text-audio rsum |" in report

    listed = json.loads(_ok(mmfl_cli("runs", "list", str(run), "--json")))
    assert [r["run_id"] for r in listed] == [summary["run_id"]] and listed[0]["rounds"] == 2
    shown = json.loads(_ok(mmfl_cli("runs", "show", summary["run_id"], str(tmp_path), "--json")))
    assert [r["test"]["rsum"] for r in shown["rounds"]] == [
        r["server_metrics"]["test"]["rsum"] for r in summary["rounds"]
    ]
    # a unique prefix of the id, or the run's folder, names the same run
    assert json.loads(_ok(mmfl_cli("runs", "show", summary["run_id"][:10], str(tmp_path), "--json"))) == shown
    assert json.loads(_ok(mmfl_cli("runs", "show", str(run), "--json"))) == shown

    evaluated = json.loads(_ok(mmfl_cli("evaluate", str(run), str(prepared / "test.jsonl"), "--json")))
    assert evaluated["retrieval"] == final
    _ok(mmfl_cli("embed", str(run), str(prepared / "test.jsonl"), "--out", str(tmp_path / "z.npz")))
    z = np.load(tmp_path / "z.npz")
    for m in mods:
        assert z[m].shape == (30, 64)
    _ok(mmfl_cli("export", str(run), "--out", str(tmp_path / "export")))
    model = mmfl.load(tmp_path / "export")
    assert model.evaluate(load_eval_manifest(prepared / "test.jsonl", model))["retrieval"] == final
    ids = list(z["text_ids"])
    texts = {s.id: s.values["text"] for s in parts["test"]}
    assert np.array_equal(model.embed("text", [texts[i] for i in ids]), z["text"])
