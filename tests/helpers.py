"""Helpers shared by test modules."""

from __future__ import annotations

SMALL = [
    "rounds=2",
    "train.local_epochs=1",
    "server.epochs_per_round=1",
    "cream.public_subset=300",
    'server.architectures={image = "cnn-small", text = "glove-mlp-large"}',
    # four sites: image-only, text-only, two paired with different architectures
    'sites=[{id = "img", modalities = ["image"], architectures = {image = "mlp"}},'
    ' {id = "txt", modalities = ["text"], architectures = {text = "bag"}},'
    ' {id = "pair-a", modalities = ["image", "text"], architectures = {image = "cnn-small", text = "glove-mlp"}},'
    ' {id = "pair-b", modalities = ["image", "text"], architectures = {image = "mlp", text = "bag"}}]',
]


def small_spec(*extra: str):
    """A four-site digits federation that trains in seconds."""
    from mmfl.config import FederationSpec, load_config

    return load_config(FederationSpec, overrides=[*SMALL, *extra])
