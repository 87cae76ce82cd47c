"""Imperceptibility of a perturbation, from the pair (clean, protected) in [0, 1] space.

SSIM is Wang et al.'s index with scikit-image's defaults (a uniform ``win``-wide window over
every spatial axis, sample covariance, K1 = 0.01, K2 = 0.03, the mean over the positions the
whole window covers, averaged over channels). Only those positions count, so the window means
are taken there alone, as running sums (one ``cumsum`` per axis): the same values as the
``scipy.ndimage.uniform_filter`` that scikit-image calls, to rounding (the tests hold it to
``skimage.metrics.structural_similarity`` within 1e-9). It exists so that a protection run
imports neither ``skimage.metrics`` (which loads ``scipy.stats``: seconds per process) nor
``scipy.ndimage``, and filters no border it then drops. The norms are plain numpy reductions.
"""

from __future__ import annotations

import math

import numpy as np

#: SSIM constants (scikit-image's, after Wang et al. 2004).
K1, K2 = 0.01, 0.03


def ssim_window(spatial: tuple[int, ...], largest: int = 7) -> int:
    """The odd window width used for an image of this spatial shape (at most ``largest``)."""
    return min(largest, *[s if s % 2 else s - 1 for s in spatial])


def window_means(a: np.ndarray, win: int) -> np.ndarray:
    """Means over every full ``win``-wide window along each axis ("valid" positions only)."""
    out = a
    for axis in range(a.ndim):
        c = np.cumsum(out, axis=axis, dtype=np.float64)
        head = np.take(c, [win - 1], axis=axis)
        tail = np.take(c, np.arange(win, c.shape[axis]), axis=axis) - np.take(c, np.arange(0, c.shape[axis] - win), axis=axis)
        out = np.concatenate([head, tail], axis=axis) / win
    return out


def ssim(clean: np.ndarray, protected: np.ndarray, win: int, data_range: float = 1.0) -> float:
    """Mean structural similarity of two channel-first images, as scikit-image computes it.

    Args:
        clean: ``(C, *spatial)`` image.
        protected: Same shape.
        win: Odd window width (>= 3, at most the smallest spatial size).
        data_range: Range of the values.

    Returns:
        The mean SSIM over channels.
    """
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    n = win ** (clean.ndim - 1)
    cov_norm = n / (n - 1)
    scores = []
    for x, y in zip(clean, protected, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        ux, uy = window_means(x, win), window_means(y, win)
        vx = cov_norm * (window_means(x * x, win) - ux * ux)
        vy = cov_norm * (window_means(y * y, win) - uy * uy)
        vxy = cov_norm * (window_means(x * y, win) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        scores.append(float(s.mean(dtype=np.float64)))
    return float(np.mean(scores))


def psnr(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB from a mean squared error (inf when it is 0)."""
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def imperceptibility(clean: np.ndarray, protected: np.ndarray, scale: float = 1.0, with_ssim: bool = True) -> dict[str, float]:
    """PSNR, SSIM, L-inf, L2 (norm and RMS) and L0 (count and fraction) of ``protected - clean``.

    Args:
        clean: Clean image in [0, 1], channel-first (C, *spatial).
        protected: Protected image, same shape.
        scale: Native units per [0, 1] unit, to report L-inf in native units too.
        with_ssim: Compute SSIM (the costly figure); ``ssim`` is None without it.

    Returns:
        ``psnr`` (dB, inf when identical), ``ssim``, ``linf``, ``linf_native``, ``l2`` (norm
        of the whole difference), ``l2_native``, ``rms``, ``l0`` (number of values that
        changed by more than 1e-6) and ``l0_fraction`` (their share).
    """
    clean = np.asarray(clean, dtype=np.float64)
    protected = np.asarray(protected, dtype=np.float64)
    if clean.shape != protected.shape:
        raise ValueError(f"shapes differ: {clean.shape} vs {protected.shape}")
    diff = protected - clean
    size = diff.size
    linf = float(np.abs(diff).max()) if size else 0.0
    sq = float(np.dot(diff.ravel(), diff.ravel())) if size else 0.0
    changed = int(np.count_nonzero((diff > 1e-6) | (diff < -1e-6)))
    mse = sq / size if size else 0.0
    if linf == 0.0:
        value_psnr, value_ssim = float("inf"), 1.0
    else:
        value_psnr = psnr(mse)
        win = ssim_window(clean.shape[1:])
        value_ssim = (ssim(clean, protected, win) if win >= 3 else float("nan")) if with_ssim else None
    return {
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
