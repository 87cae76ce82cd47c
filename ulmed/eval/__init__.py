"""Evaluation: victims, one training loop, metrics, defenses, imperceptibility and the report grid.

``run_evaluation`` (the ``ulmed evaluate`` API, :mod:`ulmed.eval.grid`) is imported lazily so
that importing :func:`imperceptibility` stays light (no MONAI/matplotlib at import time).
"""

from typing import Any

from ulmed.eval.imperceptibility import imperceptibility

__all__ = ["imperceptibility", "run_evaluation"]


def __getattr__(name: str) -> Any:
    if name == "run_evaluation":
        from ulmed.eval.grid import run_evaluation

        return run_evaluation
    raise AttributeError(f"module 'ulmed.eval' has no attribute {name!r}")
