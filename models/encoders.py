"""Trainable encoders, one per architecture name; each maps a featurized batch to unit vectors.

Every encoder ends in an L2 normalisation, so representations live on the unit sphere of
dimension ``embed_dim``. No BatchNorm and no dropout: batch statistics would couple examples
(invalid under DP-SGD) and dropout would draw from the process-global RNG (not reproducible when
sites train concurrently). Normalisation layers are GroupNorm or LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mmfl.data.features import HASH_VOCAB, Featurizer, get_featurizer


class Encoder(nn.Module):
    """``body`` then L2 normalisation."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=-1)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.ReLU()]


def _cnn(
    channels: int, widths: tuple[int, ...], embed_dim: int, head_hidden: int | None, grid: int = 4
) -> nn.Module:
    """Conv blocks, each halving the resolution, then a ``grid x grid`` map flattened into a
    head. Keeping the spatial layout matters: global average pooling learns far slower here."""
    layers: list[nn.Module] = []
    c = channels
    for w in widths:
        layers += _conv_block(c, w)
        layers.append(nn.MaxPool2d(2))
        c = w
    layers += [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
    flat = c * grid * grid
    if head_hidden:
        layers += [nn.Linear(flat, head_hidden), nn.ReLU(), nn.Linear(head_hidden, embed_dim)]
    else:
        layers.append(nn.Linear(flat, embed_dim))
    return nn.Sequential(*layers)


def _mlp(d_in: int, hidden: tuple[int, ...], embed_dim: int, layer_norm: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    if layer_norm:
        layers.append(nn.LayerNorm(d_in))
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, embed_dim))
    return nn.Sequential(*layers)


class BagOfWords(nn.Module):
    """Mean of learned embeddings of hashed token ids (0 = padding), then a linear map."""

    def __init__(self, embed_dim: int, width: int = 64, vocab: int = HASH_VOCAB) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width, padding_idx=0)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.proj(pooled)


class Conv1dAudio(nn.Module):
    """Temporal convolutions over MFCC frames (coefficients as channels), mean-pooled."""

    def __init__(self, coeffs: int, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(coeffs, width, 5, padding=2),
            nn.GroupNorm(8, width),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2),
            nn.GroupNorm(8, width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(width, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Architecture:
    """A named encoder: its modality, the featurizer feeding it, how to build it, its role."""

    name: str
    modality: str
    featurizer: str
    build: Callable[[tuple[int, ...], int], nn.Module]  # (input shape, embed_dim) -> body
    description: str


def _flat(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "cnn-small",
            "image",
            "pixels",
            lambda s, d: _cnn(s[0], (16, 32), d, None),
            "2 conv blocks (16-32) on pixels, linear head",
        ),
        Architecture(
            "cnn-large",
            "image",
            "pixels",
            lambda s, d: _cnn(s[0], (32, 64, 128), d, 512),
            "3 conv blocks (32-64-128) on pixels, MLP head (server-sized)",
        ),
        Architecture(
            "mlp",
            "image",
            "pixels",
            lambda s, d: _mlp(_flat(s), (256,), d),
            "MLP on raw pixels (one hidden layer of 256)",
        ),
        Architecture(
            "effnet-linear",
            "image",
            "effnet-lite0",
            lambda s, d: _mlp(s[0], (), d, layer_norm=True),
            "frozen EfficientNet-Lite0 features, trainable linear head",
        ),
        Architecture(
            "effnet-mlp",
            "image",
            "effnet-lite0",
            lambda s, d: _mlp(s[0], (512,), d, layer_norm=True),
            "frozen EfficientNet-Lite0 features, trainable MLP head",
        ),
        Architecture(
            "effnet-mlp-large",
            "image",
            "effnet-lite0",
            lambda s, d: _mlp(s[0], (1024, 1024), d, layer_norm=True),
            "frozen EfficientNet-Lite0 features, 2-layer MLP head (server-sized)",
        ),
        Architecture(
            "bag",
            "text",
            "tokens",
            lambda s, d: BagOfWords(d),
            "bag of learned embeddings of hashed words",
        ),
        Architecture(
            "glove-mlp",
            "text",
            "glove-mean",
            lambda s, d: _mlp(s[0], (256,), d, layer_norm=True),
            "frozen mean GloVe-50 vector, trainable MLP head",
        ),
        Architecture(
            "glove-mlp-large",
            "text",
            "glove-mean",
            lambda s, d: _mlp(s[0], (1024, 1024), d, layer_norm=True),
            "frozen mean GloVe-50 vector, 2-layer MLP head (server-sized)",
        ),
        Architecture(
            "minilm-linear",
            "text",
            "minilm",
            lambda s, d: _mlp(s[0], (), d),
            "frozen MiniLM-L6 sentence embedding, trainable linear head",
        ),
        Architecture(
            "minilm-mlp",
            "text",
            "minilm",
            lambda s, d: _mlp(s[0], (512,), d),
            "frozen MiniLM-L6 sentence embedding, trainable MLP head",
        ),
        Architecture(
            "minilm-mlp-large",
            "text",
            "minilm",
            lambda s, d: _mlp(s[0], (1024, 1024), d),
            "frozen MiniLM-L6 sentence embedding, 2-layer MLP head (server-sized)",
        ),
        Architecture(
            "mfcc-mlp",
            "audio",
            "mfcc-stats",
            lambda s, d: _mlp(s[0], (128,), d),
            "MLP on pooled MFCC statistics",
        ),
        Architecture(
            "mfcc-cnn",
            "audio",
            "mfcc-seq",
            lambda s, d: Conv1dAudio(s[0], d),
            "temporal CNN on MFCC frames",
        ),
    ]
}


def architecture(name: str, modality: str | None = None) -> Architecture:
    """Look up an architecture, checking that it encodes ``modality``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[name]
    if modality is not None and arch.modality != modality:
        raise ValueError(f"architecture {name!r} encodes {arch.modality}, not {modality}")
    return arch


def featurizers_for(
    architectures: Mapping[str, str], image_size: int, image_channels: int
) -> dict[str, Featurizer]:
    """The featurizer feeding each modality's architecture."""
    return {
        m: get_featurizer(architecture(name, m).featurizer, image_size, image_channels)
        for m, name in architectures.items()
    }


def build_encoder(name: str, input_shape: tuple[int, ...], embed_dim: int) -> Encoder:
    return Encoder(architecture(name).build(input_shape, embed_dim))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
