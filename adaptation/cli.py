"""``mmfl train-unimodal`` and ``mmfl adapt``: uni-modal models in, a multimodal site's models out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from mmfl import terminal
from mmfl.config import AdaptConfig, load_config
from mmfl.data.manifest import Manifest, load_manifest
from mmfl.data.prepared import has_dataset_info, read_dataset_info
from mmfl.data.sample import Sample
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text
from mmfl.paths import feature_cache_root

console = terminal.console()


def train_unimodal_cmd(
    data: Path = typer.Option(..., "--data", help="labeled manifest (CSV or JSONL), one or more modalities"),
    modality: str | None = typer.Option(
        None,
        "--modality",
        help="image, text or audio; needed when the manifest holds several (rows without it are skipped)",
    ),
    arch: str = typer.Option(..., "--arch", help="architecture, e.g. mlp, cnn-small, bag, mfcc-mlp"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write"),
    epochs: int = typer.Option(20, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    image_size: int | None = typer.Option(
        None, "--image-size", help="default: dataset.json beside the manifest, else 32"
    ),
    image_channels: int | None = typer.Option(None, "--image-channels"),
) -> None:
    """Train one uni-modal classifier (a source model for `mmfl adapt`)."""
    # Imported here: torch is not needed for ``mmfl --help``.
    from mmfl.adaptation.adapt import FeaturizerSpec, save_unimodal, train_unimodal
    from mmfl.data.features import get_featurizer
    from mmfl.data.tensors import load_tensors
    from mmfl.models.encoders import architecture

    manifest, modality, skipped = _one_modality(load_manifest(data, require_label=True), data, modality)
    try:
        spec = architecture(arch, modality)
    except ValueError as exc:
        raise MmflError(str(exc)) from None
    if skipped:
        console.print(f"{skipped} of {skipped + len(manifest)} rows hold no {modality}: skipped")
    info = read_dataset_info(data.parent) if has_dataset_info(data.parent) else None
    classes = info.classes if info else sorted({s.label for s in manifest.samples if s.label is not None})
    feat_spec = FeaturizerSpec(
        name=spec.featurizer,
        image_size=image_size or (info.image_size if info else 32),
        image_channels=image_channels or (info.image_channels if info else 3),
    )
    feat = get_featurizer(feat_spec.name, feat_spec.image_size, feat_spec.image_channels)
    tensors = load_tensors(manifest.samples, {modality: feat}, classes, feature_cache_root())
    model, meta = train_unimodal(tensors, modality, arch, classes, feat_spec, epochs, lr, seed=seed)
    meta.trained_on["manifest_fingerprint"] = manifest.fingerprint()
    save_unimodal(out, model, meta)
    console.print(
        f"{modality} model ({arch}, {meta.trained_on['samples']} samples, {len(classes)} classes) -> {out}"
    )
    console.print(f"privacy: this model is {meta.privacy}")


def score(
    paired: list[Sample], classes: list[str], before: list[int], after: list[int]
) -> dict[str, float | int] | None:
    """Accuracy (%) of the fused prediction before and after adaptation on the pairs that carry a
    label; None when none does (a label outside the models' classes counts as wrong)."""
    rows = [i for i, s in enumerate(paired) if s.label is not None]
    if not rows:
        return None
    truth = np.array([classes.index(paired[i].label) if paired[i].label in classes else -1 for i in rows])
    hit = lambda predicted: 100 * float((np.asarray(predicted)[rows] == truth).mean())  # noqa: E731
    return {"scored": len(rows), "before": hit(before), "after": hit(after)}


def _one_modality(manifest: Manifest, path: Path, modality: str | None) -> tuple[Manifest, str, int]:
    """(the rows holding the chosen modality, reduced to it; the modality; rows skipped).

    A manifest with one modality needs no choice; one with several needs ``--modality``."""
    present = list(manifest.modalities)
    if modality is None:
        if len(present) != 1:
            raise MmflError(
                f"manifest {path} holds {', '.join(present)}: choose one with --modality {'|'.join(present)}"
            )
        modality = present[0]
    if modality not in present:
        raise MmflError(
            f"manifest {path} has no {modality} column (it holds {', '.join(present)}): "
            f"choose --modality {'|'.join(present)}"
        )
    rows = [
        Sample(s.id, {modality: s.values[modality]}, s.label, s.group)
        for s in manifest.samples
        if s.has(modality)
    ]
    return Manifest(manifest.path, rows, (modality,)), modality, len(manifest) - len(rows)


def adapt_cmd(
    model: list[str] = typer.Option(..., "--model", help="MODALITY=CHECKPOINT (one per modality)"),
    data: Path = typer.Option(..., "--data", help="the site's manifest of paired samples (labels unused)"),
    out: Path = typer.Option(..., "--out", help="folder for the adapted models and adapt_report.json"),
    config: Path | None = typer.Option(None, "--config", help="adaptation settings (TOML)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a setting, e.g. --set fusion=af"),
) -> None:
    """Adapt uni-modal models to this site's unlabeled paired data, without any source data."""
    from mmfl.adaptation.adapt import adapt, fused_probabilities, load_unimodal, save_unimodal

    settings = load_config(AdaptConfig, config, set_)
    checkpoints = {}
    for item in model:
        if "=" not in item:
            raise MmflError(f"--model {item!r} is not MODALITY=CHECKPOINT")
        m, path = item.split("=", 1)
        checkpoints[m.strip()] = load_unimodal(Path(path.strip()))
    target = load_manifest(data)
    adapted, report = adapt(checkpoints, target, settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m, (mdl, meta) in adapted.items():
        paths[m] = str(out / f"adapted-{m}.pt")
        save_unimodal(Path(paths[m]), mdl, meta)
    paired = [s for s in target.samples if all(s.has(m) for m in adapted)]
    fused = fused_probabilities(adapted, paired)
    report["fused_predictor"] = {"rule": "mean of the adapted models' class probabilities", "models": paths}
    report["predictions"] = [
        {"id": s.id, "class": adapted[next(iter(adapted))][1].classes[int(c)]}
        for s, c in zip(paired, fused.argmax(1), strict=True)
    ]
    report.pop("pseudo_labels", None)
    classes = adapted[next(iter(adapted))][1].classes
    report["accuracy"] = score(paired, classes, report.pop("predicted_before"), fused.argmax(1).tolist())
    atomic_write_text(out / "adapt_report.json", json.dumps(report, indent=2))
    for column in report["ignored_columns"]:
        console.print(f"the manifest's {column} column is ignored: no {column} model was given")
    console.print(
        f"gap {report['gap']['mean']:.3f} (threshold {report['gap']['threshold']}) -> "
        f"{report['fusion'].upper()}; pseudo-label coverage {report['rounds'][-1]['coverage']:.0%}"
    )
    accuracy = report["accuracy"]
    if accuracy is None:
        console.print("no labels in the manifest: cannot score (the predictions are in adapt_report.json)")
    else:
        console.print(
            f"accuracy against the manifest's labels ({accuracy['scored']} of {len(paired)} pairs labeled): "
            f"before {accuracy['before']:.1f} % (the source models fused), after {accuracy['after']:.1f} % "
            f"({accuracy['after'] - accuracy['before']:+.1f})"
        )
    console.print(f"privacy: {report['privacy']}")
    console.print(f"written: {out / 'adapt_report.json'}")
