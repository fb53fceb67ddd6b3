"""The coordinator's copy of each group's model (:mod:`mmfl.strategies.groups`).

Per group: the weights :math:`w_g` its members start each round from, FedAvgM's velocity
:math:`v_g`, and the public set featurized for the group's architectures, from which the
group's model represents the round's mixed items as one participant of the regression. Goes
into checkpoints (:meth:`GroupModels.state_dict`), so a resumed run continues every group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mmfl.data.mixing import encode_mixed
from mmfl.data.prepared import PreparedDataset
from mmfl.data.tensors import Tensors, load_tensors
from mmfl.models.encoders import featurizers_for
from mmfl.models.multimodal import MultiEncoder
from mmfl.paths import feature_cache_root
from mmfl.protocols.messages import MixPlan
from mmfl.strategies.fedavg import momentum_step, weighted_average
from mmfl.strategies.groups import Group


class GroupModels:
    """Every group's weights and velocity, by group name."""

    def __init__(
        self, dataset: PreparedDataset, embed_dim: int, momentum: float, seed: int, with_pool: bool = False
    ) -> None:
        self.dataset = dataset
        self.with_pool = with_pool  # the run's public set holds the unpaired pool
        self.embed_dim = embed_dim
        self.momentum = momentum
        self.seed = seed
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.velocity: dict[str, dict[str, np.ndarray]] = {}
        self._public: dict[str, Tensors] = {}  # featurized once per group, not checkpointed

    def _model(self, group: Group) -> MultiEncoder:
        info = self.dataset.info
        archs = group.architecture_map
        feats = featurizers_for(archs, info.image_size, info.image_channels)
        return MultiEncoder(
            archs, {m: f.shape for m, f in feats.items()}, self.embed_dim, len(info.classes), seed=self.seed
        )

    def current(self, group: Group) -> dict[str, np.ndarray]:
        """The weights the group's members start this round from (a fresh model at first)."""
        if group.name not in self.weights:
            self.weights[group.name] = {
                k: v.detach().cpu().numpy().copy() for k, v in self._model(group).state_dict().items()
            }
        return self.weights[group.name]

    def update(
        self, group: Group, trained: Sequence[Mapping[str, np.ndarray]], examples: Sequence[float]
    ) -> None:
        """The members' weights, averaged by their example counts, then FedAvgM's momentum step."""
        averaged = weighted_average(trained, examples)
        self.weights[group.name], self.velocity[group.name] = momentum_step(
            self.current(group), averaged, self.velocity.get(group.name), self.momentum, 1.0
        )

    def represent(self, group: Group, plan: MixPlan) -> dict[str, torch.Tensor]:
        """The group's model's representations of the plan's mixed items, one row per item."""
        model = self._model(group)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.current(group).items()})
        if group.name not in self._public:
            info = self.dataset.info
            feats = featurizers_for(group.architecture_map, info.image_size, info.image_channels)
            self._public[group.name] = load_tensors(
                self.dataset.public_set(self.with_pool).samples, feats, info.classes, feature_cache_root()
            )
        reps = encode_mixed(model, self._public[group.name].inputs, plan)
        return {m: torch.from_numpy(v) for m, v in reps.items()}

    def state_dict(self) -> dict[str, object]:
        return {
            "weights": {g: {k: torch.from_numpy(np.asarray(v)) for k, v in w.items()} for g, w in self.weights.items()},
            "velocity": {g: {k: torch.from_numpy(np.asarray(v)) for k, v in w.items()} for g, w in self.velocity.items()},
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        def arrays(d: object) -> dict[str, dict[str, np.ndarray]]:
            return {g: {k: v.numpy() for k, v in w.items()} for g, w in d.items()}  # type: ignore[attr-defined]

        self.weights = arrays(state.get("weights", {}))
        self.velocity = arrays(state.get("velocity", {}))
