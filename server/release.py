"""The sites' ensemble as a deliverable (issue 34): after the last round the coordinator asks the
sites whose own policy consents (``policy.release_final_model``) for their final models, once,
and fuses those that hold every modality of the run by similarity
(:func:`~mmfl.models.ensemble.fuse`), the members chosen on val; each member encodes
the val and test splits once.

The ensemble is a run's candidate like the federation's server and the site-free controls; its
weights are saved as one flat state (``members.K.<parameter>``) with the members' sites and
architectures in ``summary.json`` (``delivery.ensemble``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mmfl.data.prepared import PreparedDataset
from mmfl.data.tensors import Tensors, load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.models.ensemble import choose_members, fuse
from mmfl.models.metrics import pairwise_retrieval
from mmfl.models.multimodal import MultiEncoder
from mmfl.paths import feature_cache_root
from mmfl.protocols.delivery import EnsembleRecord
from mmfl.protocols.messages import Capabilities
from mmfl.server.exchange import ReleasedModel

MEMBER_PREFIX = "members.{k}."


def member_model(architectures: dict[str, str], dataset: PreparedDataset, embed_dim: int) -> MultiEncoder:
    """An empty model of a site's declared architectures (the shapes its weights must have)."""
    info = dataset.info
    feats = featurizers_for(architectures, info.image_size, info.image_channels)
    return MultiEncoder(architectures, {m: f.shape for m, f in feats.items()}, embed_dim, len(info.classes))


def reference_shapes(
    caps: Capabilities, dataset: PreparedDataset, embed_dim: int
) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in member_model(caps.architectures, dataset, embed_dim).state_dict().items()
    }


@dataclass
class EnsembleResult:
    """The chosen members (on val), every k's val rsum, the ensemble's val and test retrieval,
    and the released sites left out with the reason."""

    members: list[ReleasedModel]
    val_by_k: dict[int, float]
    val: dict[str, float]
    test: dict[str, float]
    left_out: dict[str, str] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    """Each released site's contribution to the ensemble on val (:func:`contributions`)."""

    @property
    def sites(self) -> list[str]:
        return [m.site_id for m in self.members]

    def state_bytes(self) -> bytes:
        """The flat state of the members' weights (``final_model.pt`` when delivered; their keys
        and shapes were checked when they arrived)."""
        state = {
            MEMBER_PREFIX.format(k=k) + n: v
            for k, m in enumerate(self.members)
            for n, v in _tensors(m.weights).items()
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def record(self) -> EnsembleRecord:
        """What ``summary.json`` keeps of the ensemble (``delivery.ensemble``)."""
        return EnsembleRecord(
            sites=self.sites,
            architectures=[m.architectures for m in self.members],
            val_rsum_by_members={str(k): v for k, v in self.val_by_k.items()},
            left_out=self.left_out,
            contributions_val=self.contributions,
            val=self.val,
            test=self.test,
        )


def build_ensemble(
    released: Sequence[ReleasedModel],
    dataset: PreparedDataset,
    modalities: Sequence[str],
    embed_dim: int,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 512,
) -> EnsembleResult | None:
    """Fuse the released models that hold every modality, the top-k by their own val rsum for
    the k best on val (:func:`~mmfl.models.ensemble.choose_members`); None when none holds them all."""
    wanted = set(modalities)
    left_out = {
        r.site_id: f"holds {', '.join(sorted(r.architectures))} only; the ensemble's members hold every modality"
        for r in released
        if not wanted <= set(r.architectures)
    }
    usable = [r for r in released if r.site_id not in left_out]
    if not usable:
        return None
    info = dataset.info
    splits = {split: dataset.manifest(split).samples for split in ("val", "test")}
    # Each member encodes each split once; every candidate ensemble fuses those vectors.
    vectors: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    data: dict[str, Tensors] = {}
    for r in usable:
        model = member_model(r.architectures, dataset, embed_dim)
        model.load_state_dict(_tensors(r.weights))
        feats = featurizers_for(
            {m: r.architectures[m] for m in modalities}, info.image_size, info.image_channels
        )
        for split, samples in splits.items():
            data[split] = load_tensors(samples, feats, info.classes, feature_cache_root())
            vectors[r.site_id, split] = {
                m: model.encode(m, data[split].inputs[m], batch_size) for m in modalities
            }

    def retrieval(sites: list[str], split: str) -> dict[str, float]:
        d = data[split]
        index = {m: torch.arange(len(d.labels)) for m in d.present}
        encode = lambda m, rows: fuse([vectors[s, split][m][rows] for s in sites])  # noqa: E731
        return pairwise_retrieval(encode, index, d.present, d.labels, pairs, info.pairing == "class")

    val_rsum = lambda sites: retrieval(sites, "val").get("rsum", 0.0)  # noqa: E731
    alone = [(r.site_id, val_rsum([r.site_id])) for r in usable]
    chosen, by_k = choose_members(alone, val_rsum)
    members = [next(r for r in usable if r.site_id == s) for s in chosen]
    valued = contributions(chosen, [r.site_id for r in usable], val_rsum)
    return EnsembleResult(
        members, by_k, retrieval(chosen, "val"), retrieval(chosen, "test"), left_out, valued
    )


def contributions(
    chosen: list[str], usable: list[str], val_rsum: Callable[[list[str]], float]
) -> dict[str, float]:
    """Each released site's contribution to the delivered ensemble, leave-one-out on val:

        member:      val(chosen) - val(chosen without it)      (> 0: it helps)
        non-member:  val(chosen with it) - val(chosen)         (<= 0 here: why it was left out)

    Exact for the ensemble as delivered (no retraining: each member's model is fixed); what a
    site gave the other sites' models during the rounds is not in it. A lone member has no
    ensemble to leave: its contribution is the ensemble's whole val rsum."""
    base = val_rsum(chosen)
    out = {}
    for site in usable:
        if site in chosen:
            rest = [s for s in chosen if s != site]
            out[site] = base - (val_rsum(rest) if rest else 0.0)
        else:
            out[site] = val_rsum([*chosen, site]) - base
    return out


def _tensors(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.array(w)) for n, w in weights.items()}
