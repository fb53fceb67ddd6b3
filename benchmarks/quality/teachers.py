"""Where the sites' knowledge is lost: the teachers of a finished simulation, evaluated offline.

A representation-exchange run leaves each site's final model in the site's state folder. This
module encodes the test (or val) split with every site's model and reports each site's
retrieval and the retrieval of their ensemble — score fusion, the sum over sites of the
cosine-similarity matrices ``sum_k Z_k^a (Z_k^b)^T``, which is indifferent to each site's
rotation of its space. Run on a federation (sites trained on private data) and on the
``public-teachers`` control (the same architectures trained on the public set alone):

* teachers(federation) - teachers(public only) is what the sites' private data holds;
* teachers(federation) - the server (the student) is what the transfer loses.

This is a benchmark-only view: a coordinator never sees the sites' models.

    python benchmarks/quality/teachers.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmfl.client.site import Site
from mmfl.config import SiteConfig
from mmfl.data.prepared import PreparedDataset
from mmfl.data.tensors import load_tensors
from mmfl.models.metrics import retrieval_metrics
from mmfl.paths import feature_cache_root


def _similarities(
    site: Site, run_id: str, dataset: PreparedDataset, split: str, pair: tuple[str, str]
) -> torch.Tensor:
    model, meta = site.load_model(run_id)
    if meta is None:
        raise FileNotFoundError(f"{site.spec.id}: no saved model of run {run_id}")
    info = dataset.info
    data = load_tensors(
        dataset.manifest(split).samples,
        site.data.featurizers,
        info.classes,
        feature_cache_root(),
        progress=False,
    )
    rows = data.complete_rows(list(pair))
    za = model.encode(pair[0], data.inputs[pair[0]][rows])
    zb = model.encode(pair[1], data.inputs[pair[1]][rows])
    return za @ zb.T


def _rsum(sim: torch.Tensor, labels: torch.Tensor, by_class: bool, pair: tuple[str, str]) -> float:
    # retrieval_metrics ranks by za @ zb.T; a factorisation (sim, I) reproduces any score matrix.
    eye = torch.eye(len(sim))
    return float(retrieval_metrics(sim, eye, labels, by_class, pair)["rsum"])


def teacher_retrieval(run_dir: Path, split: str = "test") -> dict[str, float]:
    """Each paired site's ``split`` rsum and the score-fusion ensemble's (key ``ensemble``)."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    configs = [SiteConfig.model_validate(c) for c in json.loads((run_dir / "site_configs.json").read_text())]
    pair = tuple(summary["modalities"][:2])
    out: dict[str, float] = {}
    total: torch.Tensor | None = None
    if not configs:
        return out
    dataset = PreparedDataset(Path(configs[0].public_manifest).parent)
    by_class = dataset.info.pairing == "class"
    position = {c: i for i, c in enumerate(dataset.info.classes)}
    held = [s for s in dataset.manifest(split).samples if all(m in s.values for m in pair)]
    labels = torch.tensor([position.get(s.label, -1) if by_class else 0 for s in held], dtype=torch.long)
    for cfg in configs:
        if not set(pair) <= set(cfg.site.modalities):
            continue  # a uni-modal site ranks nothing across the pair
        sim = _similarities(Site(cfg), summary["run_id"], dataset, split, pair)
        out[cfg.site.id] = _rsum(sim, labels, by_class, pair)
        total = sim if total is None else total + sim
    if total is not None:
        out["ensemble"] = _rsum(total, labels, by_class, pair)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    args = parser.parse_args()
    for run in args.runs:
        print(run, json.dumps({k: round(v, 1) for k, v in teacher_retrieval(run, args.split).items()}))


if __name__ == "__main__":
    main()
