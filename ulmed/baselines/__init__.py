"""Baseline protection methods: error-minimising noise, mask-coded patterns, random control.

Names are resolved on first use, so importing one baseline (e.g. ``lsp``, which needs only
numpy) does not load torch and MONAI for ``em``.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ErrorMinimising": "em",
    "MaskCodedPatterns": "lsp",
    "NoPerturbation": "random_noise",
    "RandomNoise": "random_noise",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"ulmed.baselines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ulmed.baselines' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
