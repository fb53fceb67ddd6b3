"""Where mmfl keeps prepared data sets and caches: ``$MMFL_HOME`` (default ``~/.mmfl``)."""

from __future__ import annotations

import os
from pathlib import Path


def mmfl_home() -> Path:
    return Path(os.environ.get("MMFL_HOME", Path.home() / ".mmfl")).expanduser()


def data_root() -> Path:
    """Prepared built-in data sets live in ``data_root() / <name>``."""
    return mmfl_home() / "data"


def feature_cache_root() -> Path:
    """SQLite feature caches, one file per featurizer, shared by every data set and run."""
    return mmfl_home() / "cache" / "features"
