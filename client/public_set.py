"""The public set a site holds, as the coordinator's run shares it."""

from __future__ import annotations

from collections.abc import Sequence

from mmfl.config import SiteConfig
from mmfl.data.manifest import Manifest, load_manifest


def load_public_parts(
    config: SiteConfig, modalities: Sequence[str], check_files: bool = True
) -> tuple[Manifest, Manifest | None]:
    """The public manifest and the unpaired pool (``config.public_pool``, None without one),
    both confined to the public folder."""
    public = load_manifest(
        config.public_manifest, modalities, check_files=check_files, root=config.public_folder
    )
    if config.public_pool is None:
        return public, None
    return public, load_manifest(
        config.public_pool, modalities, check_files=check_files, root=config.public_folder
    )


def load_public_set(config: SiteConfig, modalities: Sequence[str], check_files: bool = True) -> Manifest:
    """The public set as the coordinator's run shares it: the public manifest's rows, then the
    unpaired pool's."""
    public, pool = load_public_parts(config, modalities, check_files)
    return public if pool is None else public.joined(pool)
