"""``openclipart``: real clip-art images with their human-written titles and keywords.

Source: Debian's ``openclipart-png`` and ``openclipart-svg`` (public domain). Each PNG has an
SVG twin whose RDF metadata holds the title (``dc:title``) and keywords (``dc:subject``); the
caption is ``"<title>. <keyword>, <keyword>, ..."``. The label is the top-level category folder.

Cleaning, stated in ``dataset.json``:

* byte-identical PNGs (the package files some images under several names) are kept once;
* images without any caption text, unreadable ones and ones over PIL's pixel limit are dropped;
* validation and test hold only images whose caption occurs once in the whole set, so each
  query has exactly one right answer and no test caption appears in training;
* captions repeated by more than ``max_per_caption`` images (one star-polygram title covers
  over a thousand) are capped in the training pools.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmfl.data.fingerprint import file_sha256
from mmfl.data.manifest import write_manifest
from mmfl.data.prepared import POOL, DatasetInfo, PreparedDataset, write_info
from mmfl.data.sample import Sample
from mmfl.errors import DataSetMissing

DEFAULT_SOURCE = Path("/usr/share/openclipart")
INSTALL_HINT = "sudo apt-get install openclipart-png openclipart-svg"
NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
SIZES = {"test": 1000, "val": 500, "public": 1500}


def read_caption(svg: Path) -> str:
    """``"<title>. <kw>, <kw>"`` from the SVG's RDF metadata ('' when it has none)."""
    try:
        work = ET.parse(svg).find(".//cc:Work", NS)
    except (ET.ParseError, OSError):
        return ""
    if work is None:
        return ""
    title = " ".join((work.findtext("dc:title", default="", namespaces=NS) or "").split())
    keywords = []
    for li in work.findall("dc:subject/rdf:Bag/rdf:li", NS):
        kw = " ".join((li.text or "").split())
        if kw and kw.lower() not in (k.lower() for k in keywords):
            keywords.append(kw)
    if title and keywords:
        return f"{title}. {', '.join(keywords)}"
    return title or ", ".join(keywords)


def normalise(caption: str) -> str:
    return re.sub(r"\s+", " ", caption.lower()).strip()


def _usable(png: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as im:
                w, h = im.size
        limit = Image.MAX_IMAGE_PIXELS
        return limit is None or w * h <= limit
    except Exception:  # noqa: BLE001
        return False


def prepare(
    root: Path, source: Path | None = None, seed: int = 0, max_per_caption: int = 100
) -> PreparedDataset:
    source = Path(source or DEFAULT_SOURCE)
    png_root, svg_root = source / "png", source / "svg"
    if not png_root.is_dir() or not svg_root.is_dir():
        raise DataSetMissing(
            f"openclipart files not found under {source} (need png/ and svg/): "
            f"install them with `{INSTALL_HINT}`"
        )
    pngs = sorted(png_root.rglob("*.png"))
    if not pngs:
        raise DataSetMissing(f"no PNG files under {png_root}: install them with `{INSTALL_HINT}`")

    seen_hashes: set[str] = set()
    dropped = {"duplicate": 0, "no caption": 0, "unreadable or too large": 0}
    samples: list[Sample] = []
    for png in tqdm(pngs, desc="reading openclipart", leave=False, disable=None):
        digest = file_sha256(png)
        if digest in seen_hashes:
            dropped["duplicate"] += 1
            continue
        seen_hashes.add(digest)
        rel = png.relative_to(png_root)
        caption = read_caption((svg_root / rel).with_suffix(".svg"))
        if not caption:
            dropped["no caption"] += 1
            continue
        if not _usable(png):
            dropped["unreadable or too large"] += 1
            continue
        samples.append(Sample(f"oc-{digest[:16]}", {"image": str(png), "text": caption}, rel.parts[0]))

    by_caption: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_caption[normalise(s.values["text"])].append(i)
    rng = np.random.default_rng(seed)
    singletons = np.array(sorted(ix[0] for ix in by_caption.values() if len(ix) == 1))
    singletons = rng.permutation(singletons)
    n_eval = SIZES["test"] + SIZES["val"]
    if len(singletons) < n_eval:
        raise DataSetMissing(f"only {len(singletons)} distinct captions; need {n_eval} for val/test")
    test, val = singletons[: SIZES["test"]], singletons[SIZES["test"] : n_eval]
    used = set(test.tolist()) | set(val.tolist())
    pool: list[int] = []
    left_out: list[int] = []
    for ix in by_caption.values():
        rest = [i for i in ix if i not in used]
        if len(rest) > max_per_caption:
            kept = sorted(rng.choice(rest, size=max_per_caption, replace=False).tolist())
            left_out.extend(sorted(set(rest) - set(kept)))
            rest = kept
        pool.extend(rest)
    capped = len(left_out)
    pool_arr = rng.permutation(np.array(sorted(pool)))
    public, private = pool_arr[: SIZES["public"]], pool_arr[SIZES["public"] :]

    split_rows = {"public": public, "private": private, "val": val, "test": test}
    for split, idx in split_rows.items():
        write_manifest(root / f"{split}.jsonl", [samples[i] for i in idx], relative_to=root)
    # The images the cap leaves out, without their (over-repeated) captions and labels: the
    # unpaired public pool, images to distil on (data/prepared.py). Never val or test rows:
    # those hold captions unique in the whole set, and every left-out caption repeats.
    unpaired = [Sample(samples[i].id, {"image": samples[i].values["image"]}, None) for i in sorted(left_out)]
    write_manifest(root / f"{POOL}.jsonl", unpaired, relative_to=root)
    categories = sorted({s.label for s in samples if s.label})
    info = DatasetInfo(
        name="openclipart",
        description="OpenClipart PNG images with title+keyword captions (image-text retrieval)",
        modalities=["image", "text"],
        classes=categories,
        pairing="instance",
        image_size=64,
        image_channels=3,
        splits={**{k: int(len(v)) for k, v in split_rows.items()}, POOL: len(unpaired)},
        source={"image": f"{png_root} (Debian openclipart-png)", "text": f"{svg_root} RDF metadata"},
        notes=[
            f"{len(pngs)} PNG files; kept {len(samples)}; dropped "
            + ", ".join(f"{v} {k}" for k, v in dropped.items()),
            f"{len(by_caption)} distinct captions, {len(singletons)} of them held by one image",
            "val and test: one image per caption, captions unique in the whole set",
            f"training pools cap a caption at {max_per_caption} images ({capped} images left out; "
            f"they are the unpaired public pool, {POOL}.jsonl: images only)",
            "label = top-level category folder",
        ],
    )
    write_info(root, info)
    return PreparedDataset(root)
