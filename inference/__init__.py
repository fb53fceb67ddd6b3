"""Use a trained model: load it from a run folder or an export, embed items, evaluate on a
manifest, export it with a model card (``mmfl evaluate | embed | export``, :func:`mmfl.load`)."""

from mmfl.inference.card import ModelCard
from mmfl.inference.trained import TrainedModel, load

__all__ = ["ModelCard", "TrainedModel", "load"]
