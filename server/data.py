"""What the coordinator trains and evaluates on: the public, validation and test splits, and
for the ``centralized`` baseline the sites' training rows pooled as the sites hold them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mmfl.config import SiteConfig
from mmfl.data.manifest import load_manifest
from mmfl.data.partition import site_holdout
from mmfl.data.prepared import PreparedDataset
from mmfl.data.tensors import Tensors, concat, load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.paths import feature_cache_root


@dataclass
class ServerData:
    """``own`` is what the server's task epochs run on; ``shapes`` its featurized input shapes."""

    public: Tensors
    own: Tensors
    val: Tensors
    test: Tensors
    shapes: dict[str, tuple[int, ...]]


def load_server_data(
    dataset: PreparedDataset,
    architectures: Mapping[str, str],
    modalities: Iterable[str],
    pool_sites: Path | None = None,
    with_pool: bool = True,
) -> ServerData:
    """The splits featurized for the server's architectures (the public set with its unpaired
    pool when ``with_pool``, :meth:`~mmfl.data.prepared.PreparedDataset.public_set`); with
    ``pool_sites`` (a JSON list of site configurations) ``own`` adds every site's training rows."""
    info = dataset.info
    wanted = set(modalities)
    feats = {
        m: f
        for m, f in featurizers_for(architectures, info.image_size, info.image_channels).items()
        if m in wanted
    }
    cache = feature_cache_root()
    manifests = {
        "public": dataset.public_set(with_pool),
        "val": dataset.manifest("val"),
        "test": dataset.manifest("test"),
    }
    split = {s: load_tensors(m.samples, feats, info.classes, cache) for s, m in manifests.items()}
    # The task epochs run on the public rows proper: the pool's rows (one modality, no label)
    # carry no task loss, and would only thin the batches.
    own = split["public"]
    if len(own) > len(dataset.manifest("public")):
        own = own.subset(range(len(dataset.manifest("public"))))
    if pool_sites is not None:
        own = concat([own, *pooled_site_rows(pool_sites, feats, dataset)])
    return ServerData(
        split["public"], own, split["val"], split["test"], {m: f.shape for m, f in feats.items()}
    )


def pooled_site_rows(configs: Path, feats: Mapping, dataset: PreparedDataset) -> list[Tensors]:  # noqa: ANN001
    """The sites' training rows exactly as the sites hold them (their modalities only, their
    holdout left out by the same :func:`~mmfl.data.partition.site_holdout`)."""
    info = dataset.info
    pooled = []
    for raw in json.loads(Path(configs).read_text(encoding="utf-8")):
        cfg = SiteConfig.model_validate(raw)
        samples = load_manifest(cfg.manifest, info.modalities).samples
        data = load_tensors(samples, feats, info.classes, feature_cache_root())
        train, _ = site_holdout(samples, cfg.seed, cfg.site.id, cfg.holdout_fraction)
        data = data.subset(train)
        for m in data.present:
            if m not in cfg.site.modalities:
                data.present[m] = torch.zeros_like(data.present[m])
        pooled.append(data)
    return pooled
