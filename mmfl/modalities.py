"""The modalities mmfl knows; a data set or federation uses a subset of them."""

from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["image", "text", "audio"]
"""One modality, as configs and messages type it."""

MODALITIES: tuple[Modality, ...] = get_args(Modality)
"""Every modality, in mmfl's canonical order (manifests list present modalities in it)."""
