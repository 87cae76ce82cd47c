"""The Bayes error of labelled features, estimated by a leave-one-out kernel posterior.

After Zhang et al., "Towards Provably Unlearnable Examples via Bayes Error Optimisation":
the Bayes error is estimated by plugging a leave-one-out Gaussian-kernel (Nadaraya-Watson)
class posterior into ``mean_i (1 - max_c p_ic)``; the estimate is differentiable in the
features, so projected gradient *ascent* on a perturbation raises it
(:class:`ulmed.core.objectives.BayesErrorObjective`).

All kernel arithmetic is done in float64 and in log space, so far-apart points never give
0/0; the posterior is returned in the features' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ulmed.core.checks import check_count
from ulmed.errors import ConfigError

__all__ = ["MIN_BANDWIDTH", "bayes_error", "check_bandwidth", "loo_kernel_posterior"]

#: Floor of the median-heuristic bandwidth (feature units).
MIN_BANDWIDTH = 1e-6


def check_bandwidth(bandwidth: float | None) -> float | None:
    """``bandwidth`` as a float, or None (the median heuristic); raises unless finite and > 0."""
    if bandwidth is None:
        return None
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) \
            or not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ConfigError(f"bandwidth must be a finite number > 0 or None (median heuristic), got {bandwidth!r}")
    return float(bandwidth)


def _median_bandwidth(sq_dists: Tensor) -> Tensor:
    """Median of the off-diagonal pairwise distances, detached and floored.

    When more than half the pairs coincide (e.g. many identical all-zero background
    patches) the plain median is 0; the median of the non-zero distances is used instead.
    The lower median is taken for an even count.
    """
    n = sq_dists.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
    dists = sq_dists.detach()[iu[0], iu[1]].sqrt()
    h = dists.median()
    if h <= 0:
        nonzero = dists[dists > 0]
        h = nonzero.median() if nonzero.numel() else h
    return h.clamp_min(MIN_BANDWIDTH)


def _check_estimator_inputs(features: Tensor, labels: Tensor, num_classes: int,
                            bandwidth: float | None) -> tuple[int, float | None]:
    """The checked ``num_classes`` and ``bandwidth`` of :func:`loo_kernel_posterior`; raises on bad inputs."""
    num_classes = check_count("num_classes", num_classes, 1)
    bandwidth = check_bandwidth(bandwidth)
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ConfigError(f"features must be a floating-point (N, D) tensor, got {shape}")
    n = features.shape[0]
    if n < 2:
        raise ConfigError(f"the leave-one-out posterior needs at least 2 points, got {n}")
    if features.shape[1] < 1:
        raise ConfigError("features must have at least one dimension (D >= 1)")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,) or labels.is_floating_point() \
            or labels.is_complex() or labels.dtype == torch.bool:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ConfigError(f"labels must be an integer ({n},) tensor matching the features, got {shape}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if not bool(torch.isfinite(features).all()):
        raise ConfigError("features must be finite (got inf or nan)")
    return num_classes, bandwidth


def loo_kernel_posterior(features: Tensor, labels: Tensor, num_classes: int,
                         bandwidth: float | None = None) -> Tensor:
    """Leave-one-out Gaussian-kernel (Nadaraya-Watson) class posterior.

    ``K_ij = exp(-||f_i - f_j||^2 / (2 h^2))`` with ``K_ii = 0`` and
    ``p_ic = sum_j K_ij [y_j = c] / sum_j K_ij``, computed in float64 as a softmax of the
    log-kernel over ``j != i`` (log-sum-exp), so it is differentiable in ``features``.

    Degenerate cases:
        * A point far from all others (every ``K_ij`` underflows in linear space) still gets
          a finite posterior: log space gives the ``h -> 0`` limit, the label distribution
          of its nearest neighbour(s).
        * If every log-kernel of a row is ``-inf`` (``||f_i - f_j||^2 / (2 h^2)`` overflows
          float64 for every ``j``), that row is the uniform ``1 / num_classes``; it carries
          no gradient.
        * ``N`` identical points, ``n`` per class in two classes: the leave-one-out
          posterior of a point's own class is ``(n - 1) / (2n - 1)``.

    Args:
        features: ``(N, D)`` finite floating-point features, ``N >= 2``.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes ``K >= 1``.
        bandwidth: Kernel width ``h > 0``; ``None`` takes the median heuristic (median of
            the off-diagonal pairwise distances, or of the non-zero ones when that median is
            0, detached, floored at :data:`MIN_BANDWIDTH`).

    Returns:
        ``(N, K)`` posterior in the dtype of ``features``; rows sum to 1.

    Raises:
        ConfigError: Bad shapes or dtypes, ``N < 2``, labels out of range, non-finite
            features or a bandwidth that is not a positive finite number.
    """
    num_classes, bandwidth = _check_estimator_inputs(features, labels, num_classes, bandwidth)
    n = features.shape[0]
    f = features.double()
    # Exact differences (no Gram-matrix cancellation), without materialising (N, N, D).
    sq_dists = torch.cdist(f, f, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    h = _median_bandwidth(sq_dists) if bandwidth is None else torch.tensor(bandwidth, dtype=f.dtype, device=f.device)
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    log_k = (-sq_dists / (2.0 * h * h)).masked_fill(eye, -math.inf)
    dead = torch.isneginf(log_k).all(1)  # every other point infinitely far in log space
    log_k = torch.where(dead[:, None] & ~eye, torch.zeros_like(log_k), log_k)
    weights = torch.softmax(log_k, dim=1)  # K_ij / sum_j K_ij, via log-sum-exp
    onehot = F.one_hot(labels.to(f.device), num_classes).to(f.dtype)
    posterior = weights @ onehot
    posterior = torch.where(dead[:, None], torch.full_like(posterior, 1.0 / num_classes), posterior)
    return posterior.to(features.dtype)


def bayes_error(features: Tensor, labels: Tensor, num_classes: int, bandwidth: float | None = None) -> Tensor:
    """Plug-in Bayes-error estimate ``mean_i (1 - max_c p_ic)`` of the LOO kernel posterior.

    Differentiable in ``features`` (``max`` contributes a subgradient). Separated classes
    give ~0; two balanced classes of ``n`` identical points each give ``(n - 1) / (2n - 1)``
    (-> 0.5 as ``n`` grows; 0 for ``n = 1`` because leave-one-out leaves only the other class).

    Args:
        features: ``(N, D)`` features, ``N >= 2``.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        bandwidth: Kernel width, or ``None`` for the median heuristic.

    Returns:
        A scalar tensor in ``[0, 1 - 1/K]``.

    Raises:
        ConfigError: As :func:`loo_kernel_posterior`.
    """
    posterior = loo_kernel_posterior(features, labels, num_classes, bandwidth)
    return (1.0 - posterior.max(dim=1).values).mean()
