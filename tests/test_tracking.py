"""Experiment tracking: what TensorBoard's and MLflow's own readers load equals summary.json."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from helpers import mmfl_cli
from mmfl.errors import MmflError
from mmfl.simulation.tracking import parse_backends

# Two sites (the paired one with DP, so that epsilon is logged), small models, 100 public rows.
TINY = [
    "rounds=2",
    "train.local_epochs=1",
    "server.epochs_per_round=1",
    "cream.public_subset=100",
    'server.architectures={image = "mlp", text = "bag"}',
    'sites=[{id = "img", modalities = ["image"], architectures = {image = "mlp"}},'
    ' {id = "pair", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"},'
    " privacy = {enabled = true}}]",
]
RUNS = {"cream-seed0": "cream-s0", "mean-seed0": "mean-s0"}
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the readers below, in this process


@pytest.fixture(scope="module")
def compared(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmfl simulate compare`` of two strategies, tracked by both backends."""
    out = tmp_path_factory.mktemp("tracked") / "cmp"
    done = mmfl_cli(
        "simulate",
        "compare",
        "--strategies",
        "cream,mean",
        "--seeds",
        "0",
        "--engine",
        "inprocess",
        "--out",
        str(out),
        "--tracking",
        "tensorboard,mlflow",
        *sum((["--set", x] for x in TINY), []),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"tensorboard --logdir {out / 'tracking' / 'tensorboard'}" in done.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{out / 'tracking' / 'mlflow.db'}" in done.stdout
    return out


def expected_metrics(summary: dict) -> dict[str, dict[int, float]]:
    """Every number of summary.json's rounds (step = round) and its final block (at the last
    round), under the names the tracking module documents."""
    out: dict[str, dict[int, float]] = defaultdict(dict)

    def put(name: str, step: int, value: float | None) -> None:
        if value is not None:
            out[name][step] = value

    for r in summary["rounds"]:
        n, sm = r["round"], r["server_metrics"]
        put("server/train_loss", n, sm.get("train_loss"))
        put("server/distill_loss", n, sm.get("distill_loss"))
        for split in ("val", "test"):
            for key, value in (sm.get(split) or {}).items():
                put(f"server/{split}/{key}", n, value)
        put("bytes/down", n, r["bytes_down"])
        put("bytes/up", n, r["bytes_up"])
        accepted = sum(1 for s in r["sites"] if s["accepted"])
        put("sites/accepted", n, accepted)
        put("sites/dropped", n, len(r["sites"]) - accepted)
        for s in r["sites"]:
            put(f"epsilon/{s['site_id']}", n, s["epsilon"])
            for key, value in s["metrics"].items():
                put(f"site/{s['site_id']}/{key}", n, value)
        for modality, value in r["weight_entropy"].items():
            put(f"weight_entropy/{modality}", n, value)
        put("time/wall_seconds", n, r["wall_seconds"])
        for phase, value in r["phase_seconds"].items():
            put(f"time/{phase}", n, value)
    last = summary["rounds"][-1]["round"]
    final = summary["final"]
    for block, split in (("retrieval", "test"), ("val_retrieval", "val")):
        for key, value in (final[block] or {}).items():
            put(f"final/{split}/{key}", last, value)
    for site, metrics in final["site_metrics"].items():
        for key, value in metrics.items():
            put(f"final/site/{site}/{key}", last, value)
    return out


def summaries(out: Path) -> dict[str, dict]:
    return {name: json.loads((out / d / "summary.json").read_text()) for name, d in RUNS.items()}


def test_mlflow_holds_each_run_side_by_side_equal_to_its_summary(compared: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{compared / 'tracking' / 'mlflow.db'}")
    by_name = summaries(compared)
    experiment = client.get_experiment_by_name(by_name["cream-seed0"]["name"])
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(RUNS)
    for name, summary in by_name.items():
        run = runs[name]
        assert run.info.status == "FINISHED" and run.data.tags["mmfl.run_id"] == summary["run_id"]
        expected = expected_metrics(summary)
        assert set(run.data.metrics) == set(expected)
        for key, values in expected.items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == sorted(values.items()), key  # each round once, the summary's value
        # the spec as params and as a file; the summary and the model card as artifacts
        params, config = run.data.params, summary["config"]
        assert params["strategy"] == summary["strategy"] and params["rounds"] == "2"
        assert params["server.architectures.image"] == "mlp"
        assert params["sites.1.privacy.enabled"] == "True" and params["sites.1.id"] == "pair"
        assert params["cream.public_subset"] == "100" and params["modalities"] == json.dumps(
            config["modalities"]
        )
        assert {k: params[k] for k, v in config.items() if isinstance(v, str | int | float)} == {
            k: str(v) for k, v in config.items() if isinstance(v, str | int | float)
        }
        folder = Path(client.download_artifacts(run.info.run_id, ""))
        assert (folder / "spec.toml").read_text() == summary["config_toml"]
        assert json.loads((folder / "summary.json").read_text()) == summary
        card = json.loads((folder / "model_card.json").read_text())
        assert (
            card["run_id"] == summary["run_id"] and card["metrics"]["test"] == summary["final"]["retrieval"]
        )
    cream = expected_metrics(by_name["cream-seed0"])
    assert set(cream["epsilon/pair"]) == {1, 2} and "epsilon/img" not in cream  # DP sites only
    assert {"server/test/image-text/rsum", "server/val/map", "site/img/task_loss"} <= set(cream)
    assert "final/site/img/image_accuracy" in cream
    # Logged as each round ended, not all at the end: round 2 came seconds after round 1.
    history = client.get_metric_history(runs["cream-seed0"].info.run_id, "server/test/rsum")
    stamps = {m.step: m.timestamp for m in history}
    assert stamps[2] - stamps[1] >= 200


def test_tensorboard_holds_each_run_equal_to_its_summary(compared: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    root = compared / "tracking" / "tensorboard"
    assert sorted(p.name for p in root.iterdir()) == sorted(RUNS)
    for name, summary in summaries(compared).items():
        events = EventAccumulator(str(root / name), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        expected = expected_metrics(summary)
        assert set(events.Tags()["scalars"]) == set(expected)
        for key, values in expected.items():
            logged = sorted((e.step, e.value) for e in events.Scalars(key))
            # TensorBoard stores float32: the summary's value rounded to float32, exactly
            assert logged == sorted((n, float(np.float32(v))) for n, v in values.items()), key
        (content,) = [
            c for t, c in events.PluginTagToContent("hparams").items() if t.endswith("session_start_info")
        ]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["strategy"].string_value == summary["strategy"]
        assert (
            hparams["rounds"].number_value == 2 and hparams["server.architectures.text"].string_value == "bag"
        )
        texts = {
            t: events.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in events.Tags()["tensors"]
        }
        spec_text = next(v for t, v in texts.items() if t.startswith("config/spec.toml"))
        assert summary["config_toml"].strip() in spec_text
        card = next(v for t, v in texts.items() if t.startswith("model_card"))
        assert summary["run_id"] in card


def test_tracking_values_are_checked() -> None:
    assert parse_backends(None) == () and parse_backends(["none"]) == ()
    assert parse_backends(["mlflow", "tensorboard,mlflow"]) == ("mlflow", "tensorboard")
    with pytest.raises(MmflError, match="'wandb'"):
        parse_backends(["tensorboard,wandb"])


@pytest.mark.parametrize("command", [["simulate"], ["simulate", "compare"]])
def test_a_bad_tracking_value_is_one_line(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmfl.cli import main

    argv = ["mmfl", *command, "--tracking", "tensorboard,wandb", "--out", str(tmp_path / "never")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmfl: error: unknown --tracking value 'wandb' (choose tensorboard, mlflow or none)"
    ]
    assert not (tmp_path / "never").exists()
