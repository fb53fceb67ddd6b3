"""A model with one encoder per modality (and optional class heads): what a site or server holds."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from mmfl.models.encoders import build_encoder

# torch.manual_seed is process-global: concurrent sites must not interleave their inits.
_INIT_LOCK = threading.Lock()


class ClassifierHead(nn.Module):
    """Linear classifier on unit vectors, logits scaled by a fixed factor. A plain
    ``nn.Linear`` keeps it compatible with Opacus' per-sample gradient samplers."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_classes, bias=False)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(z)


class MultiEncoder(nn.Module):
    """``encoders[m]`` maps modality m's inputs to unit vectors; ``heads[m]`` classifies them."""

    def __init__(
        self,
        architectures: Mapping[str, str],
        input_shapes: Mapping[str, tuple[int, ...]],
        embed_dim: int,
        num_classes: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.architectures = dict(architectures)
        self.embed_dim = embed_dim
        with _INIT_LOCK:
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            try:
                self.encoders = nn.ModuleDict(
                    {m: build_encoder(a, tuple(input_shapes[m]), embed_dim) for m, a in architectures.items()}
                )
                self.heads = nn.ModuleDict(
                    {m: ClassifierHead(embed_dim, num_classes) for m in architectures} if num_classes else {}
                )
            finally:
                torch.random.set_rng_state(state)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders.keys())

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.encoders[modality](x)

    @torch.no_grad()
    def encode(self, modality: str, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Representations in eval mode, batch by batch, on the model's device; returned on CPU."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            out = [
                self.encoders[modality](x[i : i + batch_size].to(device)).cpu()
                for i in range(0, len(x), batch_size)
            ]
        finally:
            self.train(was_training)
        if not out:
            return torch.zeros((0, self.embed_dim))
        return torch.cat(out)


def batches(n: int, batch_size: int, rng: np.random.Generator, shuffle: bool = True) -> list[np.ndarray]:
    """Index batches over ``range(n)`` in an order drawn from ``rng`` (never the global RNG)."""
    order = rng.permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
