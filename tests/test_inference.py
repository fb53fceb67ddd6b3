"""Using a trained model: load a run or an export, evaluate, embed, export (``mmfl.load`` and the
``mmfl evaluate | embed | export`` commands)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import mmfl
from helpers import as_json, mmfl_cli, small_spec
from mmfl.data.manifest import load_manifest
from mmfl.errors import MmflError
from mmfl.inference.export import export_model
from mmfl.inference.trained import load_eval_manifest
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan


@pytest.fixture(scope="module")
def trained_run(digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("inference") / "run"
    summary = as_json(run_inprocess(build_plan(small_spec(), run)))
    return run, summary


def test_a_loaded_run_reproduces_its_reported_test_metrics_exactly(trained_run, digits) -> None:
    run, summary = trained_run
    model = mmfl.load(run)
    assert model.card.run_id == summary["run_id"] and model.card.modalities == ["image", "text"]
    assert model.card.encoders["image"].architecture == "cnn-small"
    assert model.card.encoders["text"].featurizer == "glove-mean"
    assert model.card.classes == digits.info.classes and model.card.pairing == "class"
    assert [p.site for p in model.card.privacy] == [s["id"] for s in summary["sites"]]
    for split, key in (("test", "retrieval"), ("val", "val_retrieval")):
        result = model.evaluate(load_eval_manifest(digits.root / f"{split}.jsonl", model))
        assert result["retrieval"] == summary["final"][key]  # bit for bit, every key


def test_an_export_reloads_to_the_same_model(trained_run, digits, tmp_path: Path) -> None:
    run, summary = trained_run
    model = mmfl.load(run)
    out = export_model(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder-image.pt2",
        "encoder-text.pt2",
        "model.safetensors",
        "model_card.json",
    ]
    reloaded = mmfl.load(out)
    test = load_eval_manifest(digits.root / "test.jsonl", reloaded)
    assert reloaded.evaluate(test)["retrieval"] == summary["final"]["retrieval"]
    texts = ["seven", "a handwritten three", "zero"]
    a, b = model.embed("text", texts), reloaded.embed("text", texts)
    assert a.shape == (3, 256) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # The torch.export program is the trainable encoder: featurized input in, same vectors out.
    program = torch.export.load(out / "encoder-image.pt2").module()
    data = reloaded.tensors(test.samples[:7])
    assert torch.allclose(
        program(data.inputs["image"]), reloaded.encode("image", data.inputs["image"]), atol=1e-6
    )

    card = json.loads((out / "model_card.json").read_text())
    assert card["embed_dim"] == 256 and card["public_fingerprint"] == summary["dataset"]["public_fingerprint"]
    assert card["metrics"]["test"] == summary["final"]["retrieval"]
    with pytest.raises(MmflError, match="already exists"):
        export_model(model, out)


def test_a_damaged_export_or_unfinished_run_is_refused_in_one_line(trained_run, tmp_path: Path) -> None:
    run, _ = trained_run
    out = export_model(mmfl.load(run), tmp_path / "export", programs=False)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(MmflError, match="does not match the card's weights_sha256"):
        mmfl.load(out)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "plan.json").write_text((run / "plan.json").read_text())
    with pytest.raises(MmflError, match="has no final model"):
        mmfl.load(unfinished)
    with pytest.raises(MmflError, match="neither a run folder"):
        mmfl.load(tmp_path)
    with pytest.raises(MmflError, match="no audio encoder"):
        mmfl.load(run).embed("audio", ["x.npy"])


def test_a_tampered_card_or_program_is_refused_before_anything_is_built(trained_run, tmp_path: Path) -> None:
    """Issue 35, defects 10 and 11: a card asking for inputs of [1, 200000, 200000] made
    ``mmfl evaluate`` attempt a 40 TB allocation; swapped ``.pt2`` programs went unnoticed."""
    import shutil

    run, _ = trained_run
    clean = export_model(mmfl.load(run), tmp_path / "clean")
    card = json.loads((clean / "model_card.json").read_text())
    assert set(card["files"]) == {"encoder-image.pt2", "encoder-text.pt2"}
    tampered = tmp_path / "tampered"
    shutil.copytree(clean, tampered)
    card["encoders"]["image"]["input_shape"] = [1, 200000, 200000]
    (tampered / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(MmflError, match="does not match the card its weights were exported with"):
        mmfl.load(tampered)
    done = mmfl_cli("evaluate", str(tampered), str(run / "plan.json"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    swapped = tmp_path / "swapped"
    shutil.copytree(clean, swapped)
    (swapped / "encoder-image.pt2").write_bytes((clean / "encoder-text.pt2").read_bytes())
    with pytest.raises(MmflError, match="encoder-image.pt2 is missing or does not match the card's hash"):
        mmfl.load(swapped)
    (swapped / "encoder-image.pt2").unlink()
    with pytest.raises(MmflError, match="encoder-image.pt2 is missing"):
        mmfl.load(swapped)


def test_the_pairing_rule_is_explicit_and_the_ambiguous_case_refused(
    trained_run, digits, tmp_path: Path
) -> None:
    """Issue 35, defect 13: a class-paired model on a manifest without labels scored rsum 600
    (every row in one class); another data set's manifest was refused for its labels."""
    from mmfl.data.manifest import write_manifest
    from mmfl.data.sample import Sample

    run, summary = trained_run
    model = mmfl.load(run)
    rows = load_manifest(digits.root / "test.jsonl").samples[:300]
    unlabeled = load_manifest(
        write_manifest(tmp_path / "unlabeled.jsonl", [Sample(s.id, s.values) for s in rows])
    )
    with pytest.raises(MmflError, match="300 of 300 rows have no label; scoring by class"):
        model.evaluate(unlabeled)
    by_row = model.evaluate(unlabeled, "row")
    labeled = model.evaluate(load_manifest(write_manifest(tmp_path / "labeled.jsonl", rows)))
    assert by_row["pairing"] == "row" and labeled["pairing"] == "class"
    assert by_row["retrieval"]["rsum"] < 600.0 and by_row["retrieval"]["rsum"] != labeled["retrieval"]["rsum"]
    other = [Sample(s.id, s.values, "animals", None) for s in rows]  # another data set's labels
    foreign = load_manifest(write_manifest(tmp_path / "foreign.jsonl", other))
    with pytest.raises(MmflError, match="not one of the model's 10 classes"):
        model.evaluate(foreign)
    assert model.evaluate(foreign, "row")["retrieval"]["rsum"] == pytest.approx(by_row["retrieval"]["rsum"])
    done = mmfl_cli("evaluate", str(run), str(tmp_path / "unlabeled.jsonl"))
    assert done.returncode == 2 and "--pairing row" in done.stderr
    done = mmfl_cli("evaluate", str(run), str(tmp_path / "unlabeled.jsonl"), "--pairing", "row")
    assert done.returncode == 0 and "scored by row" in done.stdout


def test_cli_evaluate_embed_and_export(trained_run, digits, tmp_path: Path) -> None:
    run, summary = trained_run
    test = str(digits.root / "test.jsonl")
    done = mmfl_cli("evaluate", str(run), test, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["retrieval"] == summary["final"]["retrieval"]

    done = mmfl_cli("embed", str(run), test, "--out", str(tmp_path / "z.npz"))
    assert done.returncode == 0, done.stderr
    z = np.load(tmp_path / "z.npz")
    rows = load_manifest(test, digits.info.modalities).samples
    assert list(z["image_ids"]) == [s.id for s in rows if s.has("image")]
    assert z["image"].shape == (len(z["image_ids"]), 256) and z["image"].dtype == np.float32

    done = mmfl_cli("embed", str(run), test, "--out", str(tmp_path / "z.parquet"))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "z.parquet")
    images = [
        v
        for v, m in zip(table["vector"].to_pylist(), table["modality"].to_pylist(), strict=True)
        if m == "image"
    ]
    assert np.allclose(np.asarray(images, dtype=np.float32), z["image"])

    done = mmfl_cli("embed", str(run), test, "--out", str(tmp_path / "z.csv"))
    assert done.returncode == 2 and done.stderr.strip().startswith("mmfl: error: --out")
    assert len(done.stderr.strip().splitlines()) == 1

    done = mmfl_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "exp" / "model_card.json").exists()
    done = mmfl_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert done.returncode == 2 and "already exists" in done.stderr
