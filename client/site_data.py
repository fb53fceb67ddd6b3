"""A site's data: the public set and its private manifest, featurized for its architectures,
split once into training and held-out rows. Loaded lazily and cached between messages."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from mmfl.client.public_set import load_public_parts
from mmfl.client.state import SiteState
from mmfl.config import SiteConfig
from mmfl.data.manifest import Manifest, load_manifest
from mmfl.data.partition import site_holdout
from mmfl.data.prepared import DatasetInfo, read_dataset_info
from mmfl.data.tensors import Tensors, load_tensors
from mmfl.errors import MmflError
from mmfl.models.encoders import featurizers_for
from mmfl.paths import feature_cache_root


class SiteData:
    """The tensors a site trains, encodes and evaluates on."""

    def __init__(self, config: SiteConfig, state: SiteState) -> None:
        self.config = config
        self.spec = config.site
        self.state = state

    @cached_property
    def info(self) -> DatasetInfo:
        return read_dataset_info(self.config.public_manifest.parent)

    @property
    def by_class(self) -> bool:
        return self.info.pairing == "class"

    # Rows are checked here; files were checked in full when the agent started (mmfl client
    # start) and their content is hashed into the fingerprints below, so a changed or missing
    # file still stops the site. Skipping the image decode keeps each ClientApp process fast.
    @cached_property
    def _public_parts(self) -> tuple[Manifest, Manifest | None]:
        return load_public_parts(self.config, self.info.modalities, check_files=False)

    @cached_property
    def public_manifest(self) -> Manifest:
        public, pool = self._public_parts
        return public if pool is None else public.joined(pool)

    @cached_property
    def private_manifest(self) -> Manifest:
        return load_manifest(
            self.config.manifest, self.info.modalities, check_files=False, root=self.config.data_folder
        )

    @cached_property
    def featurizers(self):  # noqa: ANN201
        return featurizers_for(self.spec.architectures, self.info.image_size, self.info.image_channels)

    @cached_property
    def public(self) -> Tensors:
        return load_tensors(
            self.public_manifest.samples, self.featurizers, self.info.classes, feature_cache_root()
        )

    @cached_property
    def public_training(self) -> Tensors:
        """The public manifest's own rows, without the unpaired pool appended after them: what
        the task loss and a DP round's negatives use (a pool row, one modality and no label,
        carries no task loss; the pool is for the representations the coordinator asks for)."""
        if self.config.public_pool is None:
            return self.public
        return self.public.subset(range(self.public_rows))

    @property
    def public_rows(self) -> int:
        """How many rows the public manifest itself holds (the pool's follow them)."""
        return len(self._public_parts[0])

    @cached_property
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, holdout) rows of the private manifest, see
        :func:`~mmfl.data.partition.site_holdout`."""
        return site_holdout(
            self.private_manifest.samples, self.config.seed, self.spec.id, self.config.holdout_fraction
        )

    @cached_property
    def _split(self) -> tuple[Tensors, Tensors]:
        data = load_tensors(
            self.private_manifest.samples, self.featurizers, self.info.classes, feature_cache_root()
        )
        train, hold = self.rows
        return data.subset(train), data.subset(hold)

    @property
    def train(self) -> Tensors:
        return self._split[0]

    @property
    def holdout(self) -> Tensors:
        return self._split[1]

    @cached_property
    def train_groups(self) -> list[str] | None:
        """The group of each training row when the privacy unit is a group (else None)."""
        if self.spec.privacy.unit != "group":
            return None
        samples = self.private_manifest.samples
        groups = [samples[int(i)].group for i in self.rows[0]]
        if any(g is None for g in groups):
            raise MmflError(f"group-level privacy needs a group id on every row of {self.config.manifest}")
        return groups  # type: ignore[return-value]

    @cached_property
    def training_units(self) -> int:
        """Privacy units in the training rows: rows, or distinct groups."""
        groups = self.train_groups
        return len(self.rows[0]) if groups is None else len(set(groups))

    @cached_property
    def data_key(self) -> str:
        """The private manifest's fingerprint keyed with the site's secret."""
        return self.state.keyed_fingerprint(self.private_manifest.fingerprint())
