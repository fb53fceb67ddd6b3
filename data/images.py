"""Image preprocessing with PIL and numpy (torchvision is not usable with the CPU torch build).

Images are flattened onto a white background (clip art is mostly transparent), fitted into a
square without distortion, padded with white and returned as float32 ``(C, H, W)`` in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def load_image(path: str | Path, size: int, channels: int = 3) -> np.ndarray:
    """Read ``path`` as a ``(channels, size, size)`` float32 array in [0, 1]."""
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG decoders can shrink while decoding
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            im = flat.convert("RGB")
        else:
            im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    if channels == 1:
        canvas = canvas.convert("L")
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def imagenet_normalise(batch: np.ndarray) -> np.ndarray:
    """Standardise RGB values in [0, 1] with the ImageNet mean and std."""
    return (batch - IMAGENET_MEAN) / IMAGENET_STD
