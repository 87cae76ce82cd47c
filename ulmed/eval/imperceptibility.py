"""Imperceptibility of a perturbation, from the pair (clean, protected) in [0, 1] space.

PSNR and SSIM come from scikit-image; the norms are plain numpy reductions.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def imperceptibility(clean: np.ndarray, protected: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """PSNR, SSIM, L-inf, L2 (norm and RMS) and L0 (count and fraction) of ``protected - clean``.

    Args:
        clean: Clean image in [0, 1], channel-first (C, *spatial).
        protected: Protected image, same shape.
        scale: Native units per [0, 1] unit, to report L-inf in native units too.

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
    linf = float(np.abs(diff).max()) if diff.size else 0.0
    l2 = float(np.sqrt(np.sum(diff**2)))
    if linf == 0.0:
        psnr, ssim = float("inf"), 1.0
    else:
        psnr = float(peak_signal_noise_ratio(clean, protected, data_range=1.0))
        spatial = clean.shape[1:]
        win = min(7, *[s if s % 2 else s - 1 for s in spatial])
        ssim = (
            float(structural_similarity(clean, protected, data_range=1.0, channel_axis=0, win_size=win))
            if win >= 3
            else float("nan")
        )
    return {
        "psnr": psnr,
        "ssim": ssim,
        "linf": linf,
        "linf_native": linf * scale,
        "l2": l2,
        "l2_native": l2 * scale,
        "rms": float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0,
        "l0": int(np.count_nonzero(np.abs(diff) > 1e-6)),
        "l0_fraction": float(np.mean(np.abs(diff) > 1e-6)) if diff.size else 0.0,
    }
