"""``strategy = "auto"``: the method follows the federation's shape, and says why.

A shape is what each site declares: the modalities it holds and its architecture per modality.
The rule, in order (each step measured; docs/results.md):

1. every site holds every modality with one and the same architecture -> ``fedavgm`` (DP sites
   run DP-SGD on the weights): weights average directly (96 % of the server-only -> centralized gap on the
   all-paired benchmark, where representation exchange reached 14 %);
2. at least two sites hold every modality and the public set holds at least
   :data:`REGRESS_MIN_PUBLIC_PAIRS` pairs -> ``regress``: the server regresses onto the paired
   sites' representations of mixed public items (best measured with 1,000 public pairs on digits
   and 1,500 on OpenClipart); the uni-modal sites are refused with the reason. Paired sites that
   share one architecture form groups (:mod:`mmfl.strategies.groups`): averaged, one participant;
3. otherwise -> ``cream+``: representation exchange in which uni-modal sites take part (one
   paired site and two uni-modal ones: ``regress`` 39.5 test rsum, ``cream+`` 86.0, server-only
   82.8; two paired sites and one image-only on 419 OpenClipart items, 126 public pairs:
   ``regress`` 48.8, its public-only control 54.8, ``cream+`` 132.1, server-only 139.3).

Whatever is chosen, the run still delivers the better on val of its model and the site-free
controls (:mod:`mmfl.protocols.delivery`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from mmfl.config import MethodChoice


class SiteShape(BaseModel):
    """What one site declares, as the choice reads it."""

    modalities: list[str]
    architectures: Mapping[str, str]


REGRESS_MIN_PUBLIC_PAIRS = 1000
"""The smallest public set ``regress`` was measured to pay on; below, the server learns too little
by regression alone (with 126 pairs it fell far below server-only). Between 126 and 1,000 the
threshold is not located."""


def public_pairs(samples: Sequence[Any], modalities: Sequence[str]) -> int:
    """The public rows that hold every modality (``Sample.has``)."""
    return sum(1 for s in samples if all(s.has(m) for m in modalities))


def choose_method(
    modalities: Sequence[str], shapes: Sequence[SiteShape], public_pairs: int | None = None
) -> MethodChoice:
    """The method for ``shapes`` under the rule of this module's docstring; ``public_pairs``: the
    public rows holding every modality (None: not known, taken as large enough)."""
    paired = [s for s in shapes if set(modalities) <= set(s.modalities)]
    kinds = {tuple(sorted(s.architectures.items())) for s in shapes}
    if shapes and len(paired) == len(shapes) and len(kinds) == 1:
        why = f"all {len(shapes)} sites hold every modality with one architecture: their weights average"
        return MethodChoice(asked="auto", chosen="fedavgm", why=why)
    small = public_pairs is not None and public_pairs < REGRESS_MIN_PUBLIC_PAIRS
    if len(paired) >= 2 and not small:
        uni = len(shapes) - len(paired)
        why = f"{len(paired)} sites hold every modality with different architectures"
        shared = Counter(tuple(sorted(s.architectures.items())) for s in paired)
        groups = sum(1 for n in shared.values() if n >= 2)
        if groups:
            why += (
                f"; {groups} group{'s' if groups != 1 else ''} of sites with one architecture "
                "average their weights and take part as one (regress.groups)"
            )
        why += f"; {uni} uni-modal site{'s' if uni != 1 else ''} cannot take part" if uni else ""
        return MethodChoice(asked="auto", chosen="regress", why=why)
    why = (
        f"{len(paired)} of {len(shapes)} sites hold every modality: representation exchange in which "
        "uni-modal sites take part"
    )
    if len(paired) >= 2 and small:
        why = (
            f"{len(paired)} sites hold every modality but the public set holds {public_pairs} pairs, fewer "
            f"than the {REGRESS_MIN_PUBLIC_PAIRS} regress needs: representation exchange in which "
            "uni-modal sites take part"
        )
    return MethodChoice(asked="auto", chosen="cream+", why=why)
