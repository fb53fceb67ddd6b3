"""One manifest row: a sample's items per modality, its label and its group."""

from __future__ import annotations

from dataclasses import dataclass

FILE_MODALITIES = ("image", "audio")
"""Modalities whose manifest cells are file paths; a ``text`` cell holds the text itself."""


@dataclass(frozen=True)
class Sample:
    """One validated row. ``values`` maps modality to an absolute path (files) or the text."""

    id: str
    values: dict[str, str]
    label: str | None = None
    group: str | None = None

    def has(self, modality: str) -> bool:
        return modality in self.values
