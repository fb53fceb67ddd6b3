"""Split one manifest into a prepared data set: public, validation, test and a private pool,
optionally cut into one manifest per site (``mmfl data split``).

* The unit of splitting is the ``group`` (a patient, a recording session): every row of a group
  lands in the same part; a row without a group is its own unit.
* A size is a ratio of the units when below 1 and a count of units otherwise.
* ``one_answer``: validation and test take only single-row units whose text occurs once in the
  whole manifest, so every text query has exactly one right item and no evaluation text
  appears in training (as the built-in openclipart split).
* Sites: IID over units, or Dirichlet label skew over the units' labels
  (:func:`~mmfl.data.partition.partition_dirichlet`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmfl.data.partition import partition_dirichlet, partition_iid
from mmfl.data.sample import Sample
from mmfl.errors import MmflError


@dataclass
class Split:
    """The parts of a split manifest; ``sites`` is empty unless sites were asked for."""

    public: list[Sample]
    private: list[Sample]
    val: list[Sample]
    test: list[Sample]
    sites: list[list[Sample]]


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def units_of(samples: Sequence[Sample]) -> list[list[int]]:
    """Row indices grouped by ``group`` (rows without one are single units), in first-seen order."""
    by_group: dict[str, list[int]] = defaultdict(list)
    units: list[list[int]] = []
    for i, s in enumerate(samples):
        if s.group is None:
            units.append([i])
            continue
        if s.group not in by_group:
            units.append(by_group[s.group])
        by_group[s.group].append(i)
    return units


def resolve_size(size: float, n: int, name: str) -> int:
    """Units for ``size``: a ratio of ``n`` below 1, else a count."""
    if size < 0:
        raise MmflError(f"--{name} {size}: a size cannot be negative")
    count = round(size * n) if size < 1 else int(size)
    if size >= 1 and size != int(size):
        raise MmflError(f"--{name} {size}: a count must be a whole number (a ratio must be below 1)")
    return count


def split_samples(
    samples: Sequence[Sample],
    public: float,
    val: float,
    test: float,
    sites: int = 0,
    scheme: Literal["iid", "dirichlet"] = "iid",
    alpha: float = 1.0,
    one_answer: bool = False,
    seed: int = 0,
    min_site_units: int = 1,
) -> Split:
    """Split ``samples`` (see the module docstring); every row lands in exactly one part."""
    units = units_of(samples)
    n = len(units)
    sizes = {k: resolve_size(v, n, k) for k, v in (("public", public), ("val", val), ("test", test))}
    if sum(sizes.values()) > n:
        raise MmflError(
            f"public {sizes['public']} + val {sizes['val']} + test {sizes['test']} units exceed the "
            f"manifest's {n} units (groups, or rows without a group)"
        )
    rng = np.random.default_rng([seed, 211])
    order = [int(i) for i in rng.permutation(n)]
    if one_answer:
        texts = Counter(_normalised(s.values["text"]) for s in samples if s.has("text"))
        eligible = [
            u
            for u in order
            if len(units[u]) == 1
            and samples[units[u][0]].has("text")
            and texts[_normalised(samples[units[u][0]].values["text"])] == 1
        ]
    else:
        eligible = order
    n_eval = sizes["val"] + sizes["test"]
    if len(eligible) < n_eval:
        why = " with a text that occurs once (--one-answer)" if one_answer else ""
        raise MmflError(f"only {len(eligible)} units{why}; val + test need {n_eval}")
    test_units = eligible[: sizes["test"]]
    val_units = eligible[sizes["test"] : n_eval]
    taken = set(test_units) | set(val_units)
    rest = [u for u in order if u not in taken]
    public_units, private_units = rest[: sizes["public"]], rest[sizes["public"] :]

    def rows(chosen: Sequence[int]) -> list[Sample]:
        return [samples[i] for i in sorted(i for u in chosen for i in units[u])]

    site_parts: list[list[Sample]] = []
    if sites:
        if len(private_units) < sites * min_site_units:
            raise MmflError(
                f"{len(private_units)} private units cannot give {sites} sites {min_site_units} each"
            )
        if scheme == "iid":
            cuts = partition_iid(len(private_units), [1.0] * sites, rng)
        else:
            labels = [samples[units[u][0]].label for u in private_units]
            if any(lab is None for lab in labels):
                raise MmflError("--scheme dirichlet needs a label on every row (or use --scheme iid)")
            try:
                cuts = partition_dirichlet(labels, [1.0] * sites, alpha, rng, min_site_units)
            except ValueError as exc:
                raise MmflError(str(exc)) from None
        site_parts = [rows([private_units[i] for i in cut]) for cut in cuts]
    return Split(rows(public_units), rows(private_units), rows(val_units), rows(test_units), site_parts)
