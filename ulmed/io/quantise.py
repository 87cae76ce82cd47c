"""A float perturbation meets the stored grid: whole stored steps, never larger than the budget.

:func:`quantise_perturbation` is the one place where a method's native perturbation is rounded
to what a file can store (:meth:`ulmed.io.record.Record.with_perturbation` calls it), so every
writer stores ``clean + result`` without rounding again and metrics taken on the result are
those of the written file.
"""

from __future__ import annotations

import math

import numpy as np

from ulmed.errors import ConfigError
from ulmed.io.base import NORMS

__all__ = ["quantise_perturbation", "whole_steps"]


def whole_steps(eps: float, step: float | np.ndarray) -> np.ndarray:
    """The most whole stored steps whose size is at most ``eps``: ``floor(eps / step)``, exactly.

    The float quotient is corrected by one either way, so ``whole_steps(eps, step) * step <= eps``
    holds in floating point (``8 / 255 * 255`` gives 8 steps of 1, not 7).
    """
    step = np.asarray(step, dtype=np.float64)
    n = np.floor(float(eps) / step)
    n = np.where((n + 1) * step <= eps, n + 1, n)
    n = np.where(n * step > eps, n - 1, n)
    return np.maximum(n, 0.0)


def _fit_l2(k: np.ndarray, toward_zero: np.ndarray, step: np.ndarray, eps: float) -> np.ndarray:
    """Truncate the fewest rounded-away changes so that ``||k * step||_2 <= eps``."""
    limit = float(eps) ** 2 * (1 - 1e-9)
    excess = float(np.sum((k * step) ** 2)) - limit
    if excess <= 0:
        return k
    cost = ((k * step) ** 2 - (toward_zero * step) ** 2).ravel()  # >= 0: rounding away from zero only
    order = np.argsort(-cost, kind="stable")
    n = int(np.searchsorted(np.cumsum(cost[order]), excess)) + 1
    out = k.copy().ravel()
    out[order[:n]] = toward_zero.ravel()[order[:n]]
    return out.reshape(k.shape)


def quantise_perturbation(
    clean: np.ndarray,
    delta: np.ndarray,
    step: float | np.ndarray,
    *,
    eps: float | None = None,
    norm: str = "linf",
    bounds: tuple[float, float] = (-math.inf, math.inf),
    toward_zero: bool = False,
) -> np.ndarray:
    """The native perturbation as it will be stored, never larger than the budget.

    This is the one place where a float perturbation meets the stored grid; every writer
    then stores ``clean + result`` without further rounding. Clean values lie on the stored
    grid (``offset + n * step``), so a change by whole steps keeps them there. Each change
    is rounded to the nearest whole step, except where that would break a bound:

    * L-inf: at most ``floor(eps / step)`` steps (:func:`whole_steps`) per value;
    * L2: if the rounded changes have a norm above ``eps``, the changes that were rounded
      away from zero and cost the most are rounded toward zero instead, until it fits
      (rounding every change toward zero never increases the norm of ``delta``);
    * values that would leave ``bounds`` are rounded toward zero (``delta`` kept them inside).

    Float storage (``step`` 0): a float32 (or float16) ``clean`` is rounded to its own dtype,
    never moving further from ``clean`` than ``delta`` does; float64 is kept as is.

    Args:
        clean: Clean native values (on the stored grid).
        delta: Native perturbation, shaped like ``clean``; within the budget.
        step: Size of one stored step: a number (``IntensityMapping.quantum``) or an array
            broadcastable to ``clean`` (a DICOM series with one RescaleSlope per slice).
        eps: Native budget the result must keep; None only rounds to the grid.
        norm: ``"linf"`` or ``"l2"``: the norm ``eps`` bounds.
        bounds: Native range that ``clean + result`` must stay in.
        toward_zero: Round every change toward zero, not to the nearest step: no value then moves
            further than ``delta`` says, so the result's norm (a PSNR floor) is at most ``delta``'s.

    Returns:
        The quantised perturbation (float64, shaped like ``clean``).

    Raises:
        ConfigError: ``norm`` is unknown or ``step`` mixes zero and non-zero steps.
    """
    if norm not in NORMS:
        raise ConfigError(f"budget norm must be linf or l2, got {norm!r}")
    clean = np.asarray(clean)
    d = np.asarray(delta, dtype=np.float64)
    steps = np.asarray(step, dtype=np.float64)  # a number or a small array: numpy broadcasts it
    if steps.ndim:
        np.broadcast_shapes(steps.shape, d.shape)  # a clear error when it does not fit
    if (steps > 0).all():
        return _on_stored_grid(clean, d, steps, eps, norm, bounds, toward_zero)
    if (steps > 0).any():
        raise ConfigError("a record's stored steps must all be > 0 (integer storage) or all 0 (float storage)")
    return _float_stored(clean, _within_budget(d, eps, norm))


def _on_stored_grid(
    clean: np.ndarray, d: np.ndarray, steps: np.ndarray, eps: float | None, norm: str, bounds: tuple[float, float],
    toward_zero: bool = False,
) -> np.ndarray:
    """``d`` in whole ``steps`` (all > 0): rounded to the nearest (or ``toward_zero``), toward zero where a bound
    needs it.

    Steps of exactly 1 (one stored value per native unit) skip the divisions and products by
    them, which change no float.
    """
    unit_steps = np.broadcast_shapes(steps.shape, d.shape) == d.shape and bool(np.all(steps == 1.0))
    rounding = np.trunc if toward_zero else np.rint
    k = rounding(d) if unit_steps else rounding(d / steps)  # the change in whole stored steps
    levels = whole_steps(eps, steps) if eps is not None and norm == "linf" else None
    if levels is not None:
        np.clip(k, -levels, levels, out=k)
    stored = k.copy() if unit_steps else k * steps
    stored += clean
    outside = np.less(stored, bounds[0])
    outside |= np.greater(stored, bounds[1])
    del stored
    if norm == "l2" or outside.any():  # rounding toward zero is needed somewhere: compute it
        toward_zero = np.trunc(d) if unit_steps else np.trunc(d / steps)
        if levels is not None:
            np.clip(toward_zero, -levels, levels, out=toward_zero)
        k = np.where(outside, toward_zero, k)
        if eps is not None and norm == "l2":
            k = _fit_l2(k, toward_zero, steps, eps)
    if not unit_steps:
        k *= steps
    return k


def _within_budget(d: np.ndarray, eps: float | None, norm: str) -> np.ndarray:
    """``d`` clipped (L-inf) or scaled down (L2) to the budget ``eps``; as it is when within or None."""
    if eps is not None and norm == "linf":
        return np.clip(d, -eps, eps)
    if eps is not None and (size := float(np.sqrt(np.sum(d**2)))) > eps:
        return d * (eps / size * (1 - 1e-9))
    return d


def _float_stored(clean: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``d`` as it survives a float32/16 ``clean``'s dtype, never larger than ``d`` elementwise."""
    if not np.issubdtype(clean.dtype, np.floating) or clean.dtype.itemsize >= 8:
        return d
    base = clean.astype(np.float64)
    stored = (base + d).astype(clean.dtype)
    over = np.abs(stored.astype(np.float64) - base) > np.abs(d)
    stored = np.where(over, np.nextafter(stored, clean), stored)
    return stored.astype(np.float64) - base
