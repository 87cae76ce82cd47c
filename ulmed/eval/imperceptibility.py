"""Imperceptibility of a perturbation, from the pair (clean, protected) in [0, 1] space.

SSIM is Wang et al.'s index with scikit-image's defaults (a uniform ``win``-wide window over
every spatial axis, sample covariance, K1 = 0.01, K2 = 0.03, the mean over the positions the
whole window covers, averaged over channels). Only those positions count, so the window means
are taken there alone, as sums of shifted views along each axis: the same values as the
``scipy.ndimage.uniform_filter`` that scikit-image calls, to rounding (the tests hold it to
``skimage.metrics.structural_similarity`` within 1e-12). It exists so that a protection run
imports neither ``skimage.metrics`` (which loads ``scipy.stats``: seconds per process) nor
``scipy.ndimage``, and filters no border it then drops. The norms are plain numpy reductions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError
from ulmed.io.record import PIECE_VALUES as RECORD_PIECE_VALUES

#: SSIM constants (scikit-image's, after Wang et al. 2004).
K1, K2 = 0.01, 0.03


class Metrics(StrEnum):
    """How a protection run measures each record (``--metrics``); PSNR and norms are always exact."""

    #: About :data:`SSIM_SAMPLE` SSIM window positions per record (all of them for 2D images up
    #: to about 512 x 512 and for small volumes; evenly spaced slabs of a series), stating the
    #: share it visited.
    SAMPLED = "sampled"
    #: Every SSIM window position.
    FULL = "full"
    #: No SSIM.
    NONE = "none"


#: The ``--metrics`` values, in definition order.
METRICS = names(Metrics)
#: SSIM window positions visited per record under ``--metrics sampled``.
SSIM_SAMPLE = 1 << 18


def metrics_options(metrics: str | Metrics) -> dict[str, Any]:
    """The :func:`imperceptibility` keyword arguments of a ``--metrics`` choice.

    Raises:
        ConfigError: ``metrics`` is not a :class:`Metrics` value.
    """
    try:
        choice = look_up(metrics, Metrics, "--metrics")
    except ConfigError:  # the message the CLI and the request checks have always given
        raise ConfigError(f"--metrics must be one of {', '.join(METRICS)}, got {metrics!r}") from None
    positions = SSIM_SAMPLE if choice is Metrics.SAMPLED else None
    return {"with_ssim": choice is not Metrics.NONE, "ssim_positions": positions}


def ssim_window(spatial: tuple[int, ...], largest: int = 7) -> int:
    """The odd window width used for an image of this spatial shape (at most ``largest``)."""
    return min(largest, *[s if s % 2 else s - 1 for s in spatial])


def _along(axis: int, cut: slice) -> tuple[slice, ...]:
    """An index that applies ``cut`` along ``axis`` and keeps every axis before it whole."""
    return (*[slice(None)] * axis, cut)


def window_means(a: np.ndarray, win: int) -> np.ndarray:
    """Means over every full ``win``-wide window along each axis ("valid" positions only).

    Along each axis the ``win`` shifted views of the array are added in turn (``a[0:n] + a[1:n+1]
    + ...``): whole contiguous blocks for a leading axis, with no cumulative sum whose differences
    cancel (about twice as fast as summing cumulatively and subtracting, and closer to the exact
    sums). The sums are scaled once, by ``1 / win ** ndim``.
    """
    out = np.asarray(a, dtype=np.float64)
    for axis in range(out.ndim):
        n = max(out.shape[axis] - win + 1, 0)
        shifted = [out[_along(axis, slice(k, k + n))] for k in range(win)]
        total = np.array(shifted[0]) if win < 2 else np.add(shifted[0], shifted[1])
        for block in shifted[2:]:
            total += block
        out = total
    out *= 1.0 / win**out.ndim
    return out


#: Values per slab (float64) that the metrics hold at a time: memory stays bounded for a long series.
SLAB_VALUES = 1 << 21
#: Values converted at a time inside a slab (the slab's sums do not depend on it): the records'
#: cache-sized piece (:data:`ulmed.io.record.PIECE_VALUES`, ~20 % faster than 2 MB pieces here).
PIECE_VALUES = RECORD_PIECE_VALUES
#: Values per BLAS dot product in :func:`sum_squares`: below OpenBLAS's threading threshold
#: (10000), so one thread computes each product, in the same order on any machine.
DOT_VALUES = 8192

Convert = Callable[[np.ndarray], np.ndarray]


def _as_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def sum_squares(x: np.ndarray) -> float:
    """The sum of squares of a 1-D array, the same on any core count.

    ``np.dot(x, x)`` on a long array runs on every core OpenBLAS finds: its sum then depends on
    the core count in the last bits, and its threads spin for seconds after the call. Products of
    :data:`DOT_VALUES` values each stay on the calling thread.
    """
    return float(sum(np.dot(x[i : i + DOT_VALUES], x[i : i + DOT_VALUES]) for i in range(0, x.size, DOT_VALUES)))


def _slabs(length: int, per_row: int, overlap: int, rows: int | None = None) -> list[tuple[int, int]]:
    """Ranges ``[lo, hi)`` along the first spatial axis whose valid windows tile it once each.

    Each slab yields ``rows`` rows of windows (default: as many as :data:`SLAB_VALUES` allows).
    """
    rows = rows or max(1, SLAB_VALUES // max(per_row, 1))
    starts = range(0, max(length - overlap, 1), rows)
    return [(lo, min(lo + rows + overlap, length)) for lo in starts]


def _sampled_slabs(shape: tuple[int, ...], win: int, max_positions: int) -> list[tuple[int, int]]:
    """Evenly spaced slabs of one window row each, about ``max_positions`` window positions in all."""
    starts = shape[1] - win + 1
    per_start = shape[0] * int(np.prod([s - win + 1 for s in shape[2:]], dtype=np.int64))
    wanted = max(1, min(starts, max_positions // max(per_start, 1)))
    return [(lo, lo + win) for lo in np.linspace(0, starts - 1, wanted).round().astype(int).tolist()]


def _ssim_sums(clean: np.ndarray, protected: np.ndarray, to_unit: Convert, win: int, c1: float,
               c2: float) -> tuple[float, int]:
    """Sum and count of the SSIM map over the valid positions of one channel slab (native values)."""
    if clean.shape[0] == win and clean.ndim > 1:
        means = _thin_window_means(clean, protected, to_unit, win)
    else:
        x, y = to_unit(clean), to_unit(protected)
        means = tuple(window_means(a, win) for a in (x, y, x * x, y * y, x * y))
    return float(_ssim_map(*means, win ** clean.ndim, c1, c2).sum(dtype=np.float64)), means[0].size


def _ssim_map(ux: np.ndarray, uy: np.ndarray, mxx: np.ndarray, myy: np.ndarray, mxy: np.ndarray, n: int,
              c1: float, c2: float) -> np.ndarray:
    """The SSIM of every position from its five window means (sample covariance of ``n`` values).

    scikit-image's formula, in place in the arrays given (which it uses up): two temporaries
    instead of a dozen.
    """
    cov_norm = n / (n - 1)
    uxy = ux * uy
    np.multiply(ux, ux, out=ux)  # ux^2
    np.multiply(uy, uy, out=uy)  # uy^2
    mxx -= ux
    mxx *= cov_norm  # vx
    myy -= uy
    myy *= cov_norm  # vy
    mxy -= uxy
    mxy *= 2 * cov_norm  # 2 vxy
    mxy += c2
    uxy *= 2
    uxy += c1
    uxy *= mxy  # numerator
    ux += uy
    ux += c1
    mxx += myy
    mxx += c2
    ux *= mxx  # denominator
    uxy /= ux
    return uxy


def _thin_window_means(clean: np.ndarray, protected: np.ndarray, to_unit: Convert,
                       win: int) -> tuple[np.ndarray, ...]:
    """:func:`window_means` of x, y, x*x, y*y and x*y for a slab exactly ``win`` thick along its first axis.

    Such a slab (a sampled row of windows) has one window along that axis: its mean is the
    sum of the ``win`` planes, added here plane by plane in the order :func:`window_means` adds
    them, without converting or multiplying the whole slab at once; the other axes then go
    through :func:`window_means` (the scaling, once per axis group, may differ in the last bit).
    """
    sums: list[np.ndarray] = []
    for k in range(win):
        x, y = to_unit(clean[k]), to_unit(protected[k])
        planes = (x, y, x * x, y * y, x * y)
        if not sums:
            sums = [np.array(p, dtype=np.float64) for p in planes]
        else:
            for total, plane in zip(sums, planes):
                total += plane
    for total in sums:
        total *= 1.0 / win
    return tuple(window_means(total, win) for total in sums)


def ssim(clean: np.ndarray, protected: np.ndarray, win: int, data_range: float = 1.0,
         to_unit: Convert = _as_float64, max_positions: int | None = None) -> tuple[float, int]:
    """Mean structural similarity of two channel-first images, as scikit-image computes it.

    The images are read in slabs along the first spatial axis (overlapping by ``win - 1``), so
    a long series is never held in float64 whole. With ``max_positions``, when there are more
    window positions than that, only evenly spaced rows of windows along that axis are visited,
    about ``max_positions`` positions in all (at least one row).

    Args:
        clean: ``(C, *spatial)`` image.
        protected: Same shape.
        win: Odd window width (>= 3, at most the smallest spatial size).
        data_range: Range of the values.
        to_unit: Maps a slab of the arrays to the float64 values compared (default: as they are).
        max_positions: Window positions to visit at most (about); None visits every one.

    Returns:
        The mean SSIM over the visited positions of every channel, and how many were visited.
    """
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    per_row = int(np.prod(clean.shape[2:], dtype=np.int64))
    positions = clean.shape[0] * int(np.prod([s - win + 1 for s in clean.shape[1:]], dtype=np.int64))
    if max_positions is not None and positions > max_positions:
        slabs = _sampled_slabs(clean.shape, win, max_positions)
    else:
        slabs = _slabs(clean.shape[1], per_row, win - 1)
    total, count = 0.0, 0
    for c in range(clean.shape[0]):
        for lo, hi in slabs:
            part_sum, part_n = _ssim_sums(clean[c, lo:hi], protected[c, lo:hi], to_unit, win, c1, c2)
            total, count = total + part_sum, count + part_n
    return total / count, count


def psnr(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB from a mean squared error (inf when it is 0)."""
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _norms(clean: np.ndarray, protected: np.ndarray, to_unit: Convert) -> tuple[float, float, int]:
    """L-inf, squared L2 and the count of changed values of ``protected - clean``, slab by slab."""
    linf, sq, changed = 0.0, 0.0, 0
    per_row = int(np.prod(clean.shape[2:], dtype=np.int64)) * clean.shape[0]
    for lo, hi in _slabs(clean.shape[1], per_row, 0):
        p, c = protected[:, lo:hi].reshape(-1), clean[:, lo:hi].reshape(-1)
        d = np.empty(p.size, dtype=np.float64)
        highs = []
        for start in range(0, p.size, PIECE_VALUES):  # elementwise, piece by piece: no slab-sized temporaries
            part = d[start : start + PIECE_VALUES]
            np.subtract(to_unit(p[start : start + PIECE_VALUES]), to_unit(c[start : start + PIECE_VALUES]), out=part)
            np.abs(part, out=part)  # |d| while the piece is in cache (L-inf, L0); its squares are d's
            highs.append(part.max())
            changed += int(np.count_nonzero(part > 1e-6))
        if d.size:
            sq += sum_squares(d)
            linf = max(linf, float(np.max(highs)))  # the slab's max (NaN when it holds one, as d.max() is)
    return linf, sq, changed


def _integer_norms(clean: np.ndarray, protected: np.ndarray, scale: float) -> tuple[float, float, int]:
    """:func:`_norms` of integer images whose [0, 1] values are ``(native - low) / scale``, exactly.

    The differences are whole native numbers, taken in int64 and scaled once at the end, so
    L-inf is exactly ``max |difference| / scale`` (``76 / 2470``, not the difference of two
    rounded quotients) and the sum of squares is exact while it fits int64 (pieces whose
    differences reach 2^20 are summed in float64). About twice as fast as converting both images.
    """
    p, c = protected.reshape(-1), clean.reshape(-1)
    high, sq, changed = 0, 0.0, 0
    threshold = 1e-6 * scale  # the float path's "changed by more than 1e-6" in [0, 1] units
    for lo in range(0, p.size, PIECE_VALUES):
        d = np.subtract(p[lo : lo + PIECE_VALUES], c[lo : lo + PIECE_VALUES], dtype=np.int64)
        np.abs(d, out=d)
        top = int(d.max())
        high = max(high, top)
        changed += int(np.count_nonzero(d > threshold))
        sq += float(np.dot(d, d)) if top < 1 << 20 else sum_squares(d.astype(np.float64))
    return high / scale, sq / scale**2, changed


def _measured_norms(clean: np.ndarray, protected: np.ndarray, scale: float, to_unit: Convert,
                    affine: bool) -> tuple[float, float, int]:
    """L-inf, squared L2 and L0 of ``protected - clean``: none for the same array, exact for integers."""
    if protected is clean:
        return 0.0, 0.0, 0
    if affine and clean.dtype.kind in "iu" and protected.dtype.kind in "iu" and clean.size:
        return _integer_norms(clean, protected, scale)
    return _norms(clean, protected, to_unit)


def imperceptibility(clean: np.ndarray, protected: np.ndarray, scale: float = 1.0, with_ssim: bool = True,
                     to_unit: Convert = _as_float64, ssim_positions: int | None = None,
                     affine: bool = False) -> dict[str, float]:
    """PSNR, SSIM, L-inf, L2 (norm and RMS) and L0 (count and fraction) of ``protected - clean``.

    Args:
        clean: Clean image in [0, 1], channel-first (C, *spatial); or native values with ``to_unit``.
        protected: Protected image, same shape.
        scale: Native units per [0, 1] unit, to report L-inf in native units too.
        with_ssim: Compute SSIM (the costly figure); ``ssim`` is None without it.
        to_unit: Maps a slab of the arrays to float64 [0, 1] values (e.g. a record's
            ``mapping.to_unit``), so the caller need not convert whole volumes first.
        ssim_positions: Visit about this many SSIM window positions at most (evenly spaced
            slabs; :func:`ssim`); None visits all. The result says how many were visited.
        affine: ``to_unit`` is ``(native - low) / scale`` (a record's mapping): the norms of
            two integer images are then taken exactly on their native differences.

    Returns:
        ``psnr`` (dB, inf when identical), ``ssim``, ``linf``, ``linf_native``, ``l2`` (norm
        of the whole difference), ``l2_native``, ``rms``, ``l0`` (number of values that
        changed by more than 1e-6), ``l0_fraction`` (their share) and, with SSIM,
        ``ssim_positions`` (window positions it averaged) and ``ssim_fraction`` (their share).
    """
    clean, protected = np.asarray(clean), np.asarray(protected)
    if clean.shape != protected.shape:
        raise ValueError(f"shapes differ: {clean.shape} vs {protected.shape}")
    if clean.ndim < 2:
        raise ValueError(f"images must be channel-first (C, *spatial), got shape {clean.shape}")
    size = clean.size
    linf, sq, changed = _measured_norms(clean, protected, scale, to_unit, affine)
    mse = sq / size if size else 0.0
    win = ssim_window(clean.shape[1:])
    every = clean.shape[0] * int(np.prod([max(s - win + 1, 0) for s in clean.shape[1:]], dtype=np.int64))
    visited: int | None = every if with_ssim and win >= 3 else None
    if linf == 0.0:
        value_psnr, value_ssim = float("inf"), 1.0
    else:
        value_psnr = psnr(mse)
        value_ssim = None
        if with_ssim and win >= 3:
            value_ssim, visited = ssim(clean, protected, win, to_unit=to_unit, max_positions=ssim_positions)
        elif with_ssim:
            value_ssim = float("nan")
    sampling = {}
    if visited is not None:
        sampling = {"ssim_positions": visited, "ssim_fraction": visited / every if every else 1.0}
    return {
        **sampling,
        "psnr": value_psnr,
        "ssim": value_ssim,
        "linf": linf,
        "linf_native": linf * scale,
        "l2": math.sqrt(sq),
        "l2_native": math.sqrt(sq) * scale,
        "rms": math.sqrt(mse),
        "l0": changed,
        "l0_fraction": changed / size if size else 0.0,
    }
