"""Use a trained model: load it from a run folder or an export, embed items, evaluate on a
manifest, export it with a model card (``mmfl evaluate | embed | export``, :func:`mmfl.load`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmfl.inference.card import ModelCard

if TYPE_CHECKING:
    from mmfl.inference.trained import TrainedModel, load

__all__ = ["ModelCard", "TrainedModel", "load"]


def __getattr__(name: str) -> Any:
    # TrainedModel and load pull in torch: imported on first use, so that `mmfl --help` and the
    # commands that do not load a model start in well under a second.
    if name in ("TrainedModel", "load"):
        from mmfl.inference import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'mmfl.inference' has no attribute {name!r}")
