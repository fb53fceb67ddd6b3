"""mmfl: federated multimodal training where sites share representations, not data or weights."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmfl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
