"""ulmed: unlearnable medical images.

Protect DICOM series, NIfTI volumes and 2D image data sets with a small bounded
perturbation before sharing them::

    import ulmed
    ulmed.protect("export/", "export_protected/", method="random", eps="8/255")
    protected = ulmed.protect(image_array, eps="4/255")
"""

from importlib import metadata
from typing import Any

from ulmed.errors import ConfigError, InputError, MissingDependencyError, OutputError, UlmedError

try:
    __version__ = metadata.version("ulmed")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "ConfigError",
    "InputError",
    "MissingDependencyError",
    "OutputError",
    "UlmedError",
    "__version__",
    "protect",
    "protect_array",
]


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import ulmed.io`` does not load the whole pipeline."""
    if name in ("protect", "protect_array"):
        from ulmed import api

        return getattr(api, name)
    raise AttributeError(f"module 'ulmed' has no attribute {name!r}")
