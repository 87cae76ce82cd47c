"""Percentiles of an array as :func:`numpy.percentile` gives them, counted instead of sorted for integers.

The robust budget range of a volume (:meth:`ulmed.io.record.IntensityMapping.for_data`) and the body
mask (:func:`ulmed.core.body.body_mask`) need two percentiles of up to about 2^20 values per record.
For integer values spanning a modest range, counting each value (``numpy.bincount``) finds the
order statistics in one pass, where ``numpy.percentile`` partitions the array; the interpolation
between them is numpy's own ("linear"), so the results are the same floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentiles", "robust_sample"]

#: Widest value range (max - min + 1) counted; a wider one is left to ``numpy.percentile``.
COUNTED_RANGE = 1 << 22
#: Values a robust percentile is taken from at most (a regular subsample of a larger array).
SAMPLE_VALUES = 1 << 20


def robust_sample(values: np.ndarray) -> np.ndarray:
    """A regular subsample of ``values`` (flattened) of at most about :data:`SAMPLE_VALUES` values."""
    flat = np.asarray(values).reshape(-1)
    return flat[:: max(1, flat.size // SAMPLE_VALUES)]


def percentiles(values: np.ndarray, q: Sequence[float]) -> list[float]:
    """The ``q`` percentiles (0-100) of ``values``, equal to ``numpy.percentile(values, q)`` ("linear").

    Raises:
        ValueError: ``values`` is empty.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        raise ValueError("percentiles of an empty array")
    if flat.dtype.kind not in "iub":
        return [float(v) for v in np.percentile(flat, q)]
    low, high = int(flat.min()), int(flat.max())
    if high - low + 1 > COUNTED_RANGE:
        return [float(v) for v in np.percentile(flat, q)]
    cum = np.cumsum(np.bincount((flat - low).astype(np.intp, copy=False), minlength=high - low + 1))
    out = []
    for quantile in np.true_divide(np.asarray(q, dtype=np.float64), 100):
        # numpy's "linear" method: the virtual index (n - 1) q, between order statistics k and k + 1
        virtual = (flat.size - 1) * quantile
        k = int(np.floor(virtual))
        a, b = (low + int(np.searchsorted(cum, i, side="right")) for i in (k, min(k + 1, flat.size - 1)))
        out.append(float(_lerp(float(a), float(b), virtual - k)))
    return out


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between ``a`` and ``b`` (``numpy.lib._function_base_impl._lerp``)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t
