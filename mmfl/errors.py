"""Errors that reach the user as one line of text (the CLI prints ``str(err)`` and exits 2)."""


class MmflError(Exception):
    """Base class: a user-facing failure with a one-line message."""


class ConfigError(MmflError):
    """A configuration file or override that does not validate."""


class ManifestError(MmflError):
    """A manifest with bad rows; nothing of it was loaded."""


class DataSetMissing(MmflError):
    """A built-in data set whose source files are not installed; the message says what to install."""
