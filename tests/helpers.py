"""Helpers shared by test modules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from mmfl.protocols.messages import RepresentInstruction, TrainSettings

SMALL = [
    'strategy="cream"',
    # the site-free controls are built by the tests of delivery itself (test_delivery.py)
    "delivery.select=false",
    "rounds=2",
    "train.local_epochs=1",
    "server.epochs_per_round=1",
    "cream.public_subset=300",
    'server.architectures={image = "cnn-small", text = "glove-mlp-large"}',
    # four sites: image-only, text-only, two paired with different architectures
    'sites=[{id = "img", modalities = ["image"], architectures = {image = "mlp"}},'
    ' {id = "txt", modalities = ["text"], architectures = {text = "bag"}},'
    ' {id = "pair-a", modalities = ["image", "text"], architectures = {image = "cnn-small", text = "glove-mlp"}},'
    ' {id = "pair-b", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}}]',
]


def small_spec(*extra: str):
    """A four-site digits federation that trains in seconds."""
    from mmfl.config import FederationSpec, load_config

    return load_config(FederationSpec, overrides=[*SMALL, *extra])


SETTINGS = TrainSettings(
    local_epochs=1,
    batch_size=32,
    lr=1e-3,
    weight_decay=0,
    public_batch_size=128,
    contrast_temperature=0.5,
    interintra_weight=0.5,
)


def instruction(
    site, round_: int, local_epochs: int = 1, n: int | None = 200, run_id: str = "t"
) -> tuple[RepresentInstruction, dict[str, np.ndarray]]:  # noqa: ANN001
    """A represent instruction for the site's first ``n`` public rows (all: None), with random
    unit-length global representations."""
    samples = site.data.public_manifest.samples[:n]
    rows = {m: [i for i, x in enumerate(samples) if x.has(m)] for m in ("image", "text")}
    rng = np.random.default_rng(round_)
    arrays = {}
    for m, r in rows.items():
        g = rng.normal(size=(len(r), 256)).astype(np.float32)
        arrays[m] = g / np.linalg.norm(g, axis=1, keepdims=True)
    message = RepresentInstruction(
        run_id=run_id,
        round=round_,
        public_fingerprint=site.data.public_manifest.fingerprint(),
        public_indices=list(range(len(samples))),
        rows=rows,
        embed_dim=256,
        settings=SETTINGS.model_copy(update={"local_epochs": local_epochs}),
    )
    return message, arrays


def mmfl_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the ``mmfl`` command in a fresh interpreter (this environment, this MMFL_HOME)."""
    return subprocess.run(
        [sys.executable, "-m", "mmfl.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<question>/<name>.py`` as a module (benchmarks are scripts, not installed)."""
    (path,) = (Path(__file__).parents[1] / "benchmarks").glob(f"*/{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_context(config, path: Path, run: int = 1):  # noqa: ANN001, ANN201
    """The Flower context of a simulated node that is the site ``config`` (written to ``path``)."""
    import json

    from flwr.app import Context, RecordDict

    path.write_text(json.dumps([config.model_dump(mode="json")]))
    return Context(
        run_id=run,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config={"site-configs": str(path)},
    )


def as_json(summary) -> dict:  # noqa: ANN001 - a RunSummary
    """A run's summary as ``summary.json`` holds it (what a user reads; NaN written as null)."""
    import json

    return json.loads(summary.to_json())


def tiny_summary(strategy: str, seed: int, curve: list[tuple[float, float]], wall_seconds: float = 1.0):  # noqa: ANN201
    """A valid :class:`~mmfl.protocols.summary.RunSummary` whose server scored ``curve``, one
    (val, test) rsum per round; the last round's are the final ones. The rest is placeholder."""
    from mmfl.protocols.summary import RunSummary

    rounds = [
        {
            "round": i + 1,
            "status": "completed",
            "wall_seconds": 0.0,
            "bytes_down": 0,
            "bytes_up": 0,
            "server_metrics": {"val": {"rsum": v}, "test": {"rsum": t}},
            "sites": [],
        }
        for i, (v, t) in enumerate(curve)
    ]
    v, t = curve[-1]
    return RunSummary.model_validate(
        {
            "run_id": f"{strategy}-s{seed}",
            "name": "tiny",
            "strategy": strategy,
            "dataset": {"name": "digits", "pairing": "class", "splits": {}, "public_fingerprint": "0" * 64},
            "modalities": ["image", "text"],
            "embed_dim": 8,
            "seed": seed,
            "server": {"architectures": {}},
            "sites": [],
            "rounds": rounds,
            "final": {"retrieval": {"rsum": t}, "val_retrieval": {"rsum": v}},
            "reproducible": True,
            "wall_seconds": wall_seconds,
            "versions": {"mmfl": "0", "flwr": "0", "torch": "0", "opacus": "0", "python": "3"},
            "config": {},
        }
    )
