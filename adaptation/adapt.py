"""Source-free adaptation of uni-modal models to a multimodal site (SUMMIT).

Inputs: one trained uni-modal checkpoint per modality (:func:`train_unimodal` or a federation's
site model) and the target site's paired samples, unlabeled. No source data is used.

1. Each model predicts once over the target samples.
2. The domain gap is estimated without source data: per modality, the KL divergence between a
   Gaussian fit of the target representations and the source representation statistics the
   checkpoint carries (the analogue of SUMMIT's BatchNorm-statistics gap; our encoders use
   GroupNorm, so the checkpoint stores representation statistics instead), averaged over
   dimensions and modalities.
3. The switch picks agreement filtering (conservative, for a large gap) or entropy weighting
   (for a small one) by comparing the gap with ``gap_threshold``. That threshold must come from
   scenarios other than the target (``benchmarks/adaptation/adapt_switch.py``; ``benchmarks/adaptation/adapt.py``
   calibrates it leave-one-scenario-out); the default is calibrated on all of that benchmark's
   scenarios and lies above every gap measured there, so it picks EW on each of them. The
   default fusion is EW, not the switch: AF won no benchmark scenario by a margin.
4. Self-training per modality: cross-entropy on the fused pseudo-labels plus
   ``consistency_weight * KL(p_other || p_this)`` (the other modality's prediction, detached);
   with ``class_weights = "pseudo"`` the cross-entropy weighs class ``c`` by
   ``n / (K n_c)`` (``n`` pseudo-labels, ``n_c`` of class ``c``, ``K`` classes present), so a
   class that few rows keep is not drowned by the others;
   ``refresh_rounds`` rounds of new pseudo-labels (1, as the reference code).
5. The fused predictor averages the adapted models' class probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch.nn import functional as F

from mmfl.adaptation import pseudo_labels as pl
from mmfl.config import AdaptConfig
from mmfl.data.features import get_featurizer
from mmfl.data.manifest import Manifest
from mmfl.data.tensors import Tensors, load_tensors
from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes
from mmfl.models.encoders import architecture
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.paths import feature_cache_root

FORMAT = "mmfl-unimodal-v1"


class FeaturizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    image_size: int = 32
    image_channels: int = 3


NOT_PRIVATE = (
    "not differentially private: trained on its data without DP; its weights, and the mean and "
    "variance of its representations of that data stored with it, can reveal those rows. Share it "
    "only where that data itself could be shared."
)


class UnimodalMeta(BaseModel):
    """What a uni-modal checkpoint says about itself: its model card."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["mmfl-unimodal-v1"] = FORMAT
    modality: str
    architecture: str
    embed_dim: int
    classes: list[str]
    featurizer: FeaturizerSpec
    source_mean: list[float]
    source_var: list[float]
    trained_on: dict[str, Any] = {}
    privacy: str = NOT_PRIVATE


def build(meta: UnimodalMeta) -> MultiEncoder:
    feat = get_featurizer(meta.featurizer.name, meta.featurizer.image_size, meta.featurizer.image_channels)
    return MultiEncoder(
        {meta.modality: meta.architecture}, {meta.modality: feat.shape}, meta.embed_dim, len(meta.classes)
    )


def save_unimodal(path: Path, model: MultiEncoder, meta: UnimodalMeta) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(
        {"meta": meta.model_dump(), "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
        buffer,
    )
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_unimodal(path: Path) -> tuple[MultiEncoder, UnimodalMeta]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = UnimodalMeta.model_validate(saved["meta"])
    except FileNotFoundError:
        raise MmflError(f"model checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip/validation errors alike
        raise MmflError(f"{path} is not an mmfl uni-modal checkpoint: {type(exc).__name__}") from None
    model = build(meta)
    model.load_state_dict(saved["state"])
    return model.eval(), meta


def featurize(manifest_samples: list, meta: UnimodalMeta) -> Tensors:
    feat = get_featurizer(meta.featurizer.name, meta.featurizer.image_size, meta.featurizer.image_channels)
    return load_tensors(
        manifest_samples, {meta.modality: feat}, meta.classes, feature_cache_root(), progress=False
    )


@torch.no_grad()
def predict(model: MultiEncoder, modality: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, representations) in eval mode."""
    z = model.encode(modality, x)
    return torch.softmax(model.heads[modality](z), 1).numpy(), z.numpy()


def train_unimodal(
    data: Tensors,
    modality: str,
    arch: str,
    classes: list[str],
    featurizer: FeaturizerSpec,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    embed_dim: int = 256,
) -> tuple[MultiEncoder, UnimodalMeta]:
    """A classifier (encoder + head) on labeled rows of one modality; the checkpoint keeps the
    mean and variance of its representations of that data for gap estimation later."""
    architecture(arch, modality)
    rows = torch.nonzero(data.present[modality] & (data.labels >= 0)).flatten()
    if len(rows) == 0:
        raise MmflError(f"no labeled {modality} samples to train on")
    x, y = data.inputs[modality][rows], data.labels[rows]
    meta = UnimodalMeta(
        modality=modality,
        architecture=arch,
        embed_dim=embed_dim,
        classes=classes,
        featurizer=featurizer,
        source_mean=[],
        source_var=[],
        trained_on={"samples": int(len(rows))},
    )
    model = fit_on_labels(build(meta), modality, x, y, epochs, lr, batch_size, seed)
    _, reps = predict(model, modality, x)
    meta.source_mean, meta.source_var = reps.mean(0).tolist(), (reps.var(0) + 1e-6).tolist()
    return model.eval(), meta


def fit_on_labels(
    model: MultiEncoder,
    modality: str,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> MultiEncoder:
    """Train ``model`` (encoder + head of ``modality``) in place with cross-entropy on labels
    ``y``, ``epochs`` shuffled passes (Adam, seeded); returns it in train mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for b in batches(len(x), batch_size, rng):
            loss = F.cross_entropy(model.heads[modality](model(modality, x[b])), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def gaussian_kl(target: np.ndarray, mean_s: np.ndarray, var_s: np.ndarray) -> float:
    """Mean over dimensions of KL(N(mu_t, var_t) || N(mu_s, var_s))."""
    mean_t, var_t = target.mean(0), target.var(0) + 1e-6
    kl = 0.5 * (np.log(var_s / var_t) + (var_t + (mean_t - mean_s) ** 2) / var_s - 1.0)
    return float(kl.mean())


def pseudo_labels(
    probs: dict[str, np.ndarray], reps: dict[str, np.ndarray], fusion: str, config: AdaptConfig
) -> np.ndarray:
    a, b = sorted(probs)
    if fusion == "af":
        labels = pl.agreement_filter(probs[a], probs[b], config.certainty_cap)
    else:
        labels = pl.entropy_weighting(probs[a], probs[b], config.certainty_cap)
    if config.hypothesis_test:
        labels = pl.hypothesis_recovery(labels, probs[a], probs[b], reps[a], reps[b], config.ht_k)
    return labels


def pseudo_label_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """``w_c = n / (K n_c)`` for the ``K`` classes present among the ``n`` kept pseudo-labels;
    1 for a class without any (it never enters the loss)."""
    kept = labels[labels != pl.IGNORE]
    counts = np.bincount(kept, minlength=classes).astype(float)
    present = counts > 0
    weights = np.ones(classes)
    weights[present] = len(kept) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def self_train(
    models: dict[str, MultiEncoder],
    data: dict[str, torch.Tensor],
    labels: np.ndarray,
    config: AdaptConfig,
    seed: int,
    weight: torch.Tensor | None = None,
) -> None:
    """Per modality: CE on the pseudo-labels (class weights ``weight``, or none) + weighted KL
    to the other modality's prediction."""
    target = torch.as_tensor(labels)
    opts = {m: torch.optim.Adam(model.parameters(), lr=config.lr) for m, model in models.items()}
    rng = np.random.default_rng(seed)
    n = len(target)
    for model in models.values():
        model.train()
    for _ in range(config.epochs):
        for b in batches(n, config.batch_size, rng):
            logits = {m: models[m].heads[m](models[m](m, data[m][b])) for m in models}
            for m in models:
                others = [o for o in models if o != m]
                loss = (
                    F.cross_entropy(logits[m], target[b], weight=weight, ignore_index=pl.IGNORE)
                    if (target[b] != pl.IGNORE).any()
                    else logits[m].sum() * 0
                )
                for o in others:
                    loss = loss + config.consistency_weight * F.kl_div(
                        F.log_softmax(logits[m], 1), F.softmax(logits[o], 1).detach(), reduction="batchmean"
                    )
                opts[m].zero_grad()
                loss.backward()
                opts[m].step()
    for model in models.values():
        model.eval()


def adapt(
    checkpoints: dict[str, tuple[MultiEncoder, UnimodalMeta]], target: Manifest, config: AdaptConfig
) -> tuple[dict[str, tuple[MultiEncoder, UnimodalMeta]], dict[str, Any]]:
    """Adapt the models to the target's paired samples; returns the adapted models and a report."""
    modalities = sorted(checkpoints)
    if len(modalities) != 2:
        raise MmflError(f"adaptation needs exactly two uni-modal models, got {modalities}")
    for m, (_, meta) in checkpoints.items():
        if meta.modality != m:
            raise MmflError(f"the model given for {m} encodes {meta.modality}")
    missing = [m for m in modalities if m not in target.modalities]
    if missing:
        raise MmflError(f"the target manifest has no {missing[0]} column, but a {missing[0]} model was given")
    ignored = [m for m in target.modalities if m not in modalities]  # columns without a model
    paired = [s for s in target.samples if all(s.has(m) for m in modalities)]
    if not paired:
        raise MmflError(
            f"the target manifest {target.path} has no sample holding both {modalities[0]} and {modalities[1]}"
        )
    classes = checkpoints[modalities[0]][1].classes
    if checkpoints[modalities[1]][1].classes != classes:
        raise MmflError("the two models predict different classes")
    torch.manual_seed(config.seed)
    tensors = {m: featurize(paired, checkpoints[m][1]) for m in modalities}
    x = {m: tensors[m].inputs[m] for m in modalities}
    models = {m: checkpoints[m][0] for m in modalities}
    probs, reps = {}, {}
    for m in modalities:
        probs[m], reps[m] = predict(models[m], m, x[m])
    gaps = {
        m: gaussian_kl(
            reps[m], np.asarray(checkpoints[m][1].source_mean), np.asarray(checkpoints[m][1].source_var)
        )
        for m in modalities
    }
    gap = float(np.mean(list(gaps.values())))
    fusion = config.fusion if config.fusion != "switch" else ("af" if gap > config.gap_threshold else "ew")
    report: dict[str, Any] = {
        "samples": len(paired),
        "modalities": modalities,
        "gap": {"per_modality": gaps, "mean": gap, "threshold": config.gap_threshold},
        "mean_entropy": {m: float(pl.entropy(p).mean()) for m, p in probs.items()},
        "fusion": fusion,
        "fusion_requested": config.fusion,
        "settings": config.model_dump(),
        "privacy": "the adapted models are " + NOT_PRIVATE,
        "ignored_columns": ignored,
        # the source models' fused prediction of each paired sample, before any adaptation
        "predicted_before": np.mean([probs[m] for m in modalities], axis=0).argmax(1).tolist(),
        "rounds": [],
    }
    for r in range(config.refresh_rounds):
        labels = pseudo_labels(probs, reps, fusion, config)
        report["rounds"].append({"round": r + 1, "coverage": float((labels != pl.IGNORE).mean())})
        weight = pseudo_label_weights(labels, len(classes)) if config.class_weights == "pseudo" else None
        self_train(models, x, labels, config, config.seed + r, weight)
        for m in modalities:
            probs[m], reps[m] = predict(models[m], m, x[m])
    report["pseudo_labels"] = labels.tolist()
    adapted = {m: (models[m], checkpoints[m][1]) for m in modalities}
    return adapted, report


def fused_probabilities(models: dict[str, tuple[MultiEncoder, UnimodalMeta]], samples: list) -> np.ndarray:
    """The fused predictor: mean of the models' class probabilities on paired samples."""
    out = []
    for m, (model, meta) in sorted(models.items()):
        out.append(predict(model, m, featurize(samples, meta).inputs[m])[0])
    return np.mean(out, axis=0)
