r"""Representation regression: the server regresses onto the sites' concatenated representations.

Score fusion of K sites' models is a dot product of concatenations,
:math:`S = \frac1K [z^{img}_1, \dots, z^{img}_K]\,[z^{txt}_1, \dots, z^{txt}_K]^\top`, so the
sites' ensemble *is* one embedding space. On the round's mixed public items x, with
:math:`\hat z^m_k(x)` site k's unit-norm representation of modality m and :math:`s^m(x)` the
server's, the server minimises

.. math::

    L = w \sum_m \Big(1 - \cos\big([A_k\, s^m(x)]_{k \in R},\ [\hat z^m_k(x)]_{k \in R}\big)\Big)

over the sites R that replied this round, with one linear map :math:`A_k` per site (kept across
rounds, shared by the modalities, so it cannot undo the image-text alignment; it is not part of
the server model). Unlike a weighted mean of the sites' vectors, the concatenation needs no
common rotation of the sites' spaces: each :math:`A_k` learns its own. Pure tensor math, no I/O;
:class:`~mmfl.server.model.ServerTrainer` runs the steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SiteMaps(nn.Module):
    """One bias-free linear map per site id (created on first sight), from the server's
    embedding to that site's."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.maps = nn.ModuleDict()

    def ensure(self, site_ids: Sequence[str]) -> list[nn.Parameter]:
        """Create the maps of unseen sites; their new parameters (for the optimizer)."""
        new: list[nn.Parameter] = []
        for site in site_ids:
            key = _key(site)
            if key not in self.maps:
                with torch.random.fork_rng(devices=[]):  # the same start for a site in every run
                    torch.manual_seed(zlib.crc32(site.encode()))
                    self.maps[key] = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
                new += list(self.maps[key].parameters())
        return new

    def site_ids(self) -> list[str]:
        """The sites with a map, in creation order (the optimizer's parameter-group order)."""
        return [bytes.fromhex(k[1:]).decode() for k in self.maps]

    def forward(self, z: torch.Tensor, site_ids: Sequence[str]) -> torch.Tensor:
        """:math:`[A_k z]_{k}` for ``site_ids`` in order, unit-normalised as one vector."""
        return F.normalize(torch.cat([self.maps[_key(s)](z) for s in site_ids], 1), dim=-1)


def concatenated_targets(representations: Sequence[torch.Tensor]) -> torch.Tensor:
    r""":math:`[\hat z_1, \dots, \hat z_K] / \sqrt K`: the sites' unit-norm rows side by side (unit norm)."""
    return (
        torch.cat([F.normalize(r.to(torch.float32), dim=-1) for r in representations], 1)
        / len(representations) ** 0.5
    )


def regression_loss(
    maps: SiteMaps,
    server: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    site_ids: Mapping[str, Sequence[str]],
) -> torch.Tensor:
    """:math:`\\sum_m (1 - \\cos)` averaged over the batch (without the weight ``w``):
    ``server[m]`` the server's (n, d) embeddings, ``targets[m]`` the (n, K_m d) concatenation
    of the sites ``site_ids[m]`` that sent modality m, in that order."""
    terms = [(1 - (maps(server[m], site_ids[m]) * targets[m]).sum(1)).mean() for m in targets]
    return torch.stack(terms).sum()


def _key(site_id: str) -> str:
    # Module names cannot hold "."; hex keeps distinct ids distinct.
    return "s" + site_id.encode().hex()
