"""mmfl: federated multimodal training where sites share representations, not data or weights."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmfl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"


def load(path):  # noqa: ANN001, ANN201 - documented in mmfl.inference.trained.load
    """The trained model of a run folder or an export (see :func:`mmfl.inference.load`)."""
    from mmfl.inference import load as _load

    return _load(path)
