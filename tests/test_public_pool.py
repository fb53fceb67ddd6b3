"""The unpaired public pool: rows of one modality appended to the public set, mixed into the
regression's items per modality, never a val or test item, the same for every party and control."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from helpers import SETTINGS, as_json, small_spec
from mmfl.data.mixing import draw_mix_plan, mixed_inputs
from mmfl.data.prepared import PreparedDataset
from mmfl.errors import MmflError
from mmfl.protocols.messages import MixPlan, MixRows, RepresentInstruction
from mmfl.protocols.records import ProtocolError, check_represent_instruction
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan

POOL_ROWS = 300


def test_a_pool_replaces_a_share_of_its_modalitys_items_and_leaves_the_rest_as_they_were() -> None:
    paired, pool = [0, 1, 2, 3], [10, 11, 12]
    plain = draw_mix_plan(np.random.default_rng(5), paired, 700, ["image", "text"])
    pooled = draw_mix_plan(
        np.random.default_rng(5), paired, 700, ["image", "text"], {"image": pool, "text": []}
    )
    # The shared draw is the one a federation without a pool makes (pinned runs do not move).
    assert (pooled.first, pooled.second, pooled.weight) == (plain.first, plain.second, plain.weight)
    assert plain.own_rows == {} and set(pooled.own_rows) == {"image"}
    assert pooled.rows_of("text") == (pooled.first, pooled.second)
    first, second = pooled.rows_of("image")
    replaced = [k for k in range(700) if first[k] in pool]
    # Default share: the pool's share of the image rows (3 of 7); a pool item's first row is a
    # pool row, its second any row; every other item is the paired one it was.
    assert len(replaced) == pytest.approx(300, abs=40)
    assert set(second[k] for k in replaced) == set(paired) | set(pool)
    assert all(
        (first[k], second[k]) == (plain.first[k], plain.second[k]) for k in range(700) if k not in replaced
    )
    # The items of a modality mix that modality's rows.
    x = torch.arange(13, dtype=torch.float32)[:, None].repeat(1, 2)
    k = replaced[0]
    lam = pooled.weight["image"][k]
    assert torch.allclose(
        mixed_inputs(x, pooled, "image", [k])[0], lam * x[first[k]] + (1 - lam) * x[second[k]]
    )
    # A share set by the spec; share 0 is the plan without a pool.
    tenth = draw_mix_plan(np.random.default_rng(5), paired, 700, ["image", "text"], {"image": pool}, 0.1)
    assert sum(i in pool for i in tenth.rows_of("image")[0]) == pytest.approx(70, abs=25)
    assert (
        draw_mix_plan(np.random.default_rng(5), paired, 700, ["image", "text"], {"image": pool}, 0.0) == plain
    )


def test_own_rows_are_checked_like_the_shared_ones() -> None:
    with pytest.raises(ValidationError, match="must hold 2 items"):
        MixPlan(
            first=[0, 1],
            second=[1, 0],
            weight={"image": [0.5, 0.5]},
            own_rows={"image": MixRows(first=[0], second=[1])},
        )
    with pytest.raises(ValidationError, match="names a modality without weights"):
        MixPlan(
            first=[0], second=[1], weight={"image": [0.5]}, own_rows={"text": MixRows(first=[0], second=[1])}
        )
    plan = MixPlan(
        first=[0, 1], second=[1, 0], weight={"image": [0.1, 0.2], "text": [0.3, 0.4]},
        own_rows={"image": MixRows(first=[0, 12], second=[11, 1])},
    )  # fmt: skip
    message = RepresentInstruction(
        run_id="r", round=1, public_fingerprint="f", public_indices=[], rows={}, embed_dim=8,
        settings=SETTINGS, mix=plan,
    )  # fmt: skip
    check_represent_instruction(message, {}, 13)
    with pytest.raises(ProtocolError, match="public index outside 0..11"):
        check_represent_instruction(message, {}, 12)


def _digits_with_pool(digits: PreparedDataset, folder: Path, rows: list[dict]) -> Path:
    """A copy of the prepared digits set (its files linked) with ``rows`` as its pool."""
    folder.mkdir()
    for name in ("images", "audio"):
        (folder / name).symlink_to(digits.root / name, target_is_directory=True)
    for name in ("dataset.json", "public.jsonl", "private.jsonl", "val.jsonl", "test.jsonl"):
        shutil.copy(digits.root / name, folder / name)
    (folder / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _image_rows(digits: PreparedDataset, split: str, n: int) -> list[dict]:
    root = digits.root
    return [
        {"id": f"pool-{s.id}", "image": str(Path(s.values["image"]).relative_to(root))}
        for s in digits.manifest(split).samples[:n]
    ]


def test_a_pool_holding_a_val_or_test_image_is_refused(digits, tmp_path: Path) -> None:
    rows = _image_rows(digits, "private", 5) + _image_rows(digits, "test", 1)
    ds = PreparedDataset(_digits_with_pool(digits, tmp_path / "d", rows))
    with pytest.raises(
        MmflError,
        match=r"row 6 \(id pool-.*\) holds the image of row d.*of .*test\.jsonl; a public pool never holds a val or test item",
    ):
        ds.public_set(with_pool=True)
    assert len(ds.public_set(with_pool=False)) == len(digits.manifest("public"))  # off: never read


@pytest.fixture(scope="module")
def pooled_digits(digits, tmp_path_factory) -> Path:
    """Digits with an image-only pool: private images without their words (none is val/test)."""
    return _digits_with_pool(
        digits, tmp_path_factory.mktemp("pool") / "d", _image_rows(digits, "private", POOL_ROWS)
    )


def _run(data: Path, out: Path, *extra: str) -> dict:
    return as_json(run_inprocess(build_plan(small_spec(f'data_dir="{data}"', *extra), out)))


def test_regress_distils_on_the_pool_and_every_site_holds_the_same_public_set(
    pooled_digits: Path, tmp_path: Path
) -> None:
    """Same seed, pool on and off: the sites accept every round with the pool (their public set's
    fingerprint is the coordinator's), the regression moves (its image items mix pool rows), and
    the run's public set holds the pool's rows after the public ones."""
    regress = ['strategy="regress"', "regress.mix_items=600", "rounds=1"]
    on = _run(pooled_digits, tmp_path / "on", *regress, "public_pool=true")
    off = _run(pooled_digits, tmp_path / "off", *regress)  # the default: no pool
    for summary in (on, off):
        (record,) = summary["rounds"]
        assert record["status"] == "completed" and all(s["accepted"] for s in record["sites"])
    assert on["dataset"]["public_fingerprint"] != off["dataset"]["public_fingerprint"]
    configs = json.loads((tmp_path / "on" / "site_configs.json").read_text())
    assert all(Path(c["public_pool"]) == pooled_digits / "pool.jsonl" for c in configs)
    assert not any(c["public_pool"] for c in json.loads((tmp_path / "off" / "site_configs.json").read_text()))
    assert on["final"]["val_retrieval"] != off["final"]["val_retrieval"]
    public = PreparedDataset(pooled_digits).public_set(with_pool=True)
    assert len(public) == len(PreparedDataset(pooled_digits).manifest("public")) + POOL_ROWS
    assert all(not s.has("text") for s in public.samples[-POOL_ROWS:])


def test_the_pool_leaves_the_coordinators_own_training_alone_and_joins_the_exchange(
    pooled_digits: Path, tmp_path: Path
) -> None:
    """server-only trains on the public pairs: the pool (one modality, no label) changes nothing.
    The representation exchange takes the pool's images as public rows of the image modality,
    and every site (the text-only one included) still accepts."""
    alone = ['strategy="server-only"', "rounds=1"]
    on = _run(pooled_digits, tmp_path / "on", *alone, "public_pool=true")
    off = _run(pooled_digits, tmp_path / "off", *alone)
    assert on["final"]["retrieval"] == off["final"]["retrieval"]
    cream = _run(
        pooled_digits,
        tmp_path / "cream",
        'strategy="cream+"',
        "rounds=1",
        "cream.public_subset=5000",
        "public_pool=true",
    )
    (record,) = cream["rounds"]
    assert record["status"] == "completed" and all(s["accepted"] for s in record["sites"])
    sent = {s["site_id"]: s for s in record["sites"]}
    # img sends a representation of every public image, pool included; txt of every text.
    public = len(PreparedDataset(pooled_digits).manifest("public"))
    assert sent["img"]["bytes_up"] > sent["txt"]["bytes_up"] * (public + POOL_ROWS) / public * 0.9


def test_a_site_holds_a_pool_only_when_told(tmp_path: Path) -> None:
    from mmfl.client.cli import resolve_public_pool

    public = tmp_path / "public.jsonl"
    public.write_text("")
    assert resolve_public_pool(public, None) is None and resolve_public_pool(public, "none") is None
    with pytest.raises(MmflError, match="--public-pool beside: .*pool.jsonl does not exist"):
        resolve_public_pool(public, "beside")
    (tmp_path / "pool.jsonl").write_text("")
    assert resolve_public_pool(public, None) is None  # a pool beside it is not used unasked
    assert resolve_public_pool(public, "beside") == (tmp_path / "pool.jsonl").resolve()
    assert resolve_public_pool(public, str(tmp_path / "pool.jsonl")) == (tmp_path / "pool.jsonl").resolve()
    with pytest.raises(MmflError, match="--public-pool .*elsewhere.jsonl does not exist"):
        resolve_public_pool(public, str(tmp_path / "elsewhere.jsonl"))
