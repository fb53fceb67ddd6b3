"""``strategy = "auto"``: the method follows the federation's shape, and says why.

A shape is what each site declares: the modalities it holds and its architecture per modality.
The rule, in order (each step measured; docs/results.md):

1. every site holds every modality with one and the same architecture -> ``fedavgm`` (DP sites
   run DP-SGD on the weights): weights average directly (96 % of the server-only -> centralized gap on the
   all-paired benchmark, where representation exchange reached 14 %);
2. at least two sites hold every modality -> ``regress``: the server regresses onto the paired
   sites' representations of mixed public items (the digits default, chosen on val over
   ``cream+``); the uni-modal sites are refused with the reason;
3. otherwise -> ``cream+``: representation exchange in which uni-modal sites take part (with one
   paired site and two uni-modal ones, ``regress`` 39.5 test rsum against ``cream+`` 86.0 and
   server-only 82.8).

Whatever is chosen, the run still delivers the better on val of its model and the site-free
controls (:mod:`mmfl.protocols.delivery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from mmfl.config import MethodChoice


class SiteShape(BaseModel):
    """What one site declares, as the choice reads it."""

    modalities: list[str]
    architectures: Mapping[str, str]


def choose_method(modalities: Sequence[str], shapes: Sequence[SiteShape]) -> MethodChoice:
    """The method for ``shapes`` under the rule of this module's docstring."""
    paired = [s for s in shapes if set(modalities) <= set(s.modalities)]
    kinds = {tuple(sorted(s.architectures.items())) for s in shapes}
    if shapes and len(paired) == len(shapes) and len(kinds) == 1:
        why = f"all {len(shapes)} sites hold every modality with one architecture: their weights average"
        return MethodChoice(asked="auto", chosen="fedavgm", why=why)
    if len(paired) >= 2:
        uni = len(shapes) - len(paired)
        why = f"{len(paired)} sites hold every modality with different architectures"
        why += f"; {uni} uni-modal site{'s' if uni != 1 else ''} cannot take part" if uni else ""
        return MethodChoice(asked="auto", chosen="regress", why=why)
    why = (
        f"{len(paired)} of {len(shapes)} sites hold every modality: representation exchange in which "
        "uni-modal sites take part"
    )
    return MethodChoice(asked="auto", chosen="cream+", why=why)
