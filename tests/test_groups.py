"""Groups (``regress.groups``): sites of one shape that accept weights work are averaged with
server momentum and join the regression as one participant; the rest take part alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from helpers import as_json, small_spec
from mmfl.data.mixing import draw_mix_plan, encode_mixed
from mmfl.data.prepared import PreparedDataset
from mmfl.data.tensors import load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.paths import feature_cache_root
from mmfl.server.groups import GroupModels
from mmfl.simulation.engines import run_inprocess
from mmfl.simulation.plan import build_plan
from mmfl.strategies.fedavg import momentum_step, weighted_average
from mmfl.strategies.groups import Group, form_groups

A = {"image": "cnn-small", "text": "glove-mlp"}
B = {"image": "mlp", "text": "bag"}
PAIR = ["image", "text"]


def test_sites_of_one_shape_that_share_weights_form_a_group() -> None:
    groups, alone = form_groups(
        {
            1: (PAIR, A, True),
            2: (["text", "image"], {"text": "glove-mlp", "image": "cnn-small"}, True),  # same shape
            3: (PAIR, A, False),  # same shape, but its policy refuses weights work
            4: (PAIR, B, True),  # a shape held by one site
            5: (["image"], {"image": "cnn-small"}, True),
            6: (["image"], {"image": "cnn-small"}, True),
        }
    )
    assert [(g.name, g.members) for g in groups] == [
        ("group:image=cnn-small", (5, 6)),
        ("group:image=cnn-small,text=glove-mlp", (1, 2)),
    ]
    assert alone == [3, 4]
    assert form_groups({1: (PAIR, A, True)}) == ([], [1])


def test_a_group_model_is_the_momentum_step_of_its_members_average_and_represents_mixed_items(
    digits,
) -> None:
    dataset = PreparedDataset(digits.root)
    models = GroupModels(dataset, 64, momentum=0.5, seed=0)
    group = Group("group:x", ("image", "text"), tuple(sorted(A.items())), (1, 2))
    start = {k: v.copy() for k, v in models.current(group).items()}
    rng = np.random.default_rng(0)
    members = [
        {k: v + rng.normal(scale=0.01, size=v.shape).astype(v.dtype) for k, v in start.items()}
        for _ in (1, 2)
    ]
    models.update(group, members, [300, 100])
    expected, velocity = momentum_step(start, weighted_average(members, [300, 100]), None, 0.5, 1.0)
    for k in start:
        np.testing.assert_allclose(models.current(group)[k], expected[k], rtol=1e-6)
    # the second step carries the velocity: v = 0.5 v + delta
    models.update(group, members, [300, 100])
    again, _ = momentum_step(expected, weighted_average(members, [300, 100]), velocity, 0.5, 1.0)
    for k in start:
        np.testing.assert_allclose(models.current(group)[k], again[k], rtol=1e-5, atol=1e-7)

    public = dataset.manifest("public").samples
    plan = draw_mix_plan(np.random.default_rng(1), list(range(len(public)))[:50], 40, ["image", "text"])
    reps = models.represent(group, plan)
    model = models._model(group)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in models.current(group).items()})
    info = dataset.info
    inputs = load_tensors(
        public, featurizers_for(A, info.image_size, info.image_channels), info.classes, feature_cache_root()
    ).inputs
    for m, v in encode_mixed(model, inputs, plan).items():
        assert reps[m].shape == (40, 64)
        torch.testing.assert_close(reps[m], torch.from_numpy(v))

    # checkpointed and restored exactly
    restored = GroupModels(dataset, 64, momentum=0.5, seed=0)
    restored.load_state_dict(models.state_dict())
    for k in start:
        assert np.array_equal(restored.current(group)[k], models.current(group)[k])
        assert np.array_equal(restored.velocity[group.name][k], models.velocity[group.name][k])


def _grouped_spec(*extra: str):
    sites = (
        'sites=[{id = "a1", modalities = ["image", "text"], architectures = {image = "cnn-small", text = "glove-mlp"}},'
        ' {id = "a2", modalities = ["image", "text"], architectures = {image = "cnn-small", text = "glove-mlp"}},'
        ' {id = "b1", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}},'
        ' {id = "b2", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"},'
        '  policy = {accept = ["represent", "regress"]}}]'
    )
    return small_spec('strategy="regress"', "regress.mix_items=600", "rounds=2", sites, *extra)


def _last_checkpoint(run: Path) -> dict:
    return torch.load(sorted((run / "checkpoints").glob("round-*.pt"))[-1], weights_only=False)


def test_a_grouped_federation_averages_the_group_and_regresses_onto_it_as_one_participant(
    digits, tmp_path: Path
) -> None:
    summary = as_json(run_inprocess(build_plan(_grouped_spec(), tmp_path / "grouped")))
    lines = (tmp_path / "grouped" / "rounds.jsonl").read_text().splitlines()
    said = [json.loads(line)["message"] for line in lines if json.loads(line)["event"] == "group"]
    # announced once; b2 refuses weights work (its policy), so b1 has no partner and is alone
    assert said == ["group:image=cnn-small,text=glove-mlp: a1, a2 averaged (FedAvgM), one participant"]
    for r in summary["rounds"]:
        assert r["status"] == "completed"
        assert sorted(s["site_id"] for s in r["sites"] if s["accepted"]) == ["a1", "a2", "b1", "b2"]
    checkpoint = _last_checkpoint(tmp_path / "grouped")
    # three participants each round: the group, b1 and b2
    assert [r["contributors"] for r in checkpoint["records"]] == [{"image": 3, "text": 3}] * 2
    assert list(checkpoint["groups"]["weights"]) == ["group:image=cnn-small,text=glove-mlp"]
    maps = checkpoint["trainer"]["site_maps"]["sites"]
    assert sorted(maps) == ["b1", "b2", "group:image=cnn-small,text=glove-mlp"]

    alone = as_json(run_inprocess(build_plan(_grouped_spec('regress.groups="off"'), tmp_path / "alone")))
    checkpoint = _last_checkpoint(tmp_path / "alone")
    assert [r["contributors"] for r in checkpoint["records"]] == [{"image": 4, "text": 4}] * 2
    assert checkpoint["groups"]["weights"] == {}
    assert alone["final"]["retrieval"] != summary["final"]["retrieval"]
