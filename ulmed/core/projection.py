"""Projection helpers kept apart from the optimisation loop (advertorch style).

The numpy functions serve :class:`~ulmed.core.method.ProtectionMethod`, which projects a
method's output per record. The torch functions serve the PGD loop in
:mod:`ulmed.core.pgd`; they work on batches laid out ``(B, C, *spatial)``.

``torch`` is imported inside the torch helpers, so importing this module (and with it the
method registry and the CLI) stays cheap.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from ulmed.choices import look_up
from ulmed.core.tasks import Norm
from ulmed.errors import ConfigError

if TYPE_CHECKING:
    import torch


def project_linf(delta: np.ndarray, eps: float) -> np.ndarray:
    """Clamp a perturbation to the L-inf ball of radius ``eps``."""
    return np.clip(delta, -eps, eps)


def project(delta: np.ndarray, eps: float, norm: str = "linf") -> np.ndarray:
    """Project one record's perturbation onto the ``norm`` ball of radius ``eps``.

    Args:
        delta: Perturbation of one record (any shape).
        eps: Radius in the units of ``delta``.
        norm: ``"linf"`` (elementwise clamp) or ``"l2"`` (the whole record is one sample of
            :func:`clamp_l2`).

    Returns:
        The projected perturbation (float64 for L2, ``delta``'s dtype for L-inf).

    Raises:
        ConfigError: Unknown norm.
    """
    if look_up(norm, Norm, "budget norm") is Norm.LINF:
        return project_linf(delta, eps)
    import torch

    sample = torch.from_numpy(np.asarray(delta, dtype=np.float64).copy())[None]
    return clamp_l2(sample, float(eps))[0].numpy()


def clamp_linf(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Clamp ``delta`` elementwise to ``[-eps, eps]``.

    Args:
        delta: Perturbation of any shape.
        eps: A float, or a non-negative tensor broadcastable to ``delta`` (a per-position
            budget map, e.g. a larger budget inside the foreground than outside).

    Returns:
        The clamped perturbation (a new tensor).
    """
    import torch

    if isinstance(eps, torch.Tensor):
        eps = eps.to(device=delta.device, dtype=delta.dtype)
        return torch.maximum(torch.minimum(delta, eps), -eps)
    return delta.clamp(-float(eps), float(eps))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over every axis but the first, shaped ``(B, 1, ..., 1)``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def clamp_l2(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Scale each sample (batch axis 0) of ``delta`` into the L2 ball of radius ``eps``.

    Samples already inside the ball are returned unchanged.

    Args:
        delta: Perturbation ``(B, ...)``.
        eps: A float, or a tensor with one radius per sample (``B`` or 1 elements).

    Returns:
        The projected perturbation (a new tensor).
    """
    import torch

    radius: float | torch.Tensor = eps
    if isinstance(eps, torch.Tensor):
        if eps.numel() not in (1, delta.shape[0]):
            raise ConfigError(
                f"an L2 budget needs one radius per sample ({delta.shape[0]}) or one in all, "
                f"got shape {tuple(eps.shape)}"
            )
        radius = eps.to(device=delta.device, dtype=delta.dtype).reshape(-1, *([1] * (delta.dim() - 1)))
    norms = l2_norms(delta)
    # Shrink a little more than eps / norm so that rounding cannot leave a norm above eps.
    factor = torch.clamp(radius / norms.clamp_min(1e-12) * (1 - 1e-6), max=1.0)
    return delta * factor


def clamp_valid(x: torch.Tensor, delta: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Clip ``delta`` so that ``x + delta`` stays inside ``[lo, hi]``.

    The result is exact in floating point: ``x + result`` never leaves ``[lo, hi]``
    (provided ``x`` itself lies there), and positions already in range keep ``delta``
    bit for bit, so a budget met before stays met.

    Args:
        x: Clean images.
        delta: Perturbation broadcastable with ``x``.
        lo: Lower end of the valid range.
        hi: Upper end of the valid range.

    Returns:
        The clipped perturbation, shaped like ``x + delta``.
    """
    import torch

    adv = x + delta
    low, high = torch.aminmax(adv)  # float reductions: far cheaper than boolean masks on a CPU
    if low >= lo and high <= hi:  # nothing to clip: the values as they are (a copy, as below)
        return delta.to(adv.dtype).expand_as(adv).clone()
    clipped = adv.clamp(lo, hi)
    # Only out-of-range positions change (clamp leaves the others equal), so in-range values
    # keep their exact size (and budget).
    d = torch.where(clipped == adv, delta, clipped - x)
    # ``(a - x) + x`` may round one ulp past ``a``; one step of nextafter puts it back. Both
    # checks read the same sum: a position above ``hi`` cannot also be below ``lo``.
    total = x + d
    low, high = torch.aminmax(total)
    for wrong, toward in ((high > hi, -math.inf), (low < lo, math.inf)):
        if wrong:
            where = total > hi if toward < 0 else total < lo
            d[where] = torch.nextafter(d[where], d.new_tensor(toward))
    return d


def topk_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` computed exactly (no float rounding of the product)."""
    return min(n, math.ceil(Fraction(fraction) * n))


def l0_mask_topk(score: torch.Tensor, fraction: float, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the top ``fraction`` of spatial positions of each sample by ``score``.

    Channels share a position: the score of a position is the sum of its channels'
    scores, and the returned mask has a single channel that broadcasts over them. Each
    sample keeps exactly ``ceil(fraction * n_allowed)`` positions, all of them allowed.
    Ties are broken deterministically: the lower flat index wins. NaN scores rank last.

    Args:
        score: ``(B, C, *spatial)`` importance, higher is more important (pass
            ``grad.abs()`` for gradient saliency).
        fraction: Share of the allowed positions to keep, in ``[0, 1]``.
        allowed: Optional boolean mask broadcastable to ``(B, 1, *spatial)``; positions
            outside it are never kept and do not count toward ``n_allowed``.

    Returns:
        A boolean mask ``(B, 1, *spatial)``.

    Raises:
        ConfigError: ``fraction`` is outside ``[0, 1]`` or ``score`` has no channel axis.
    """
    import torch

    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction of positions must lie in [0, 1], got {fraction}")
    if score.dim() < 3:
        raise ConfigError(f"score must be laid out (B, C, *spatial), got shape {tuple(score.shape)}")
    pos = score.detach().sum(dim=1, keepdim=True)
    out_shape = pos.shape
    flat = torch.nan_to_num(pos.flatten(1).float(), nan=-math.inf)
    if allowed is None:
        ok = torch.ones_like(flat, dtype=torch.bool)
    else:
        ok = torch.broadcast_to(allowed.to(device=score.device, dtype=torch.bool), out_shape).flatten(1)
    # Order by score (stable: equal scores keep index order), then move allowed positions first.
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ok_in_order = torch.gather(ok, 1, order)
    order = torch.gather(order, 1, torch.sort(ok_in_order.to(torch.uint8), dim=1, descending=True, stable=True).indices)
    counts = [topk_count(fraction, int(n)) for n in ok.sum(dim=1).tolist()]
    rank = torch.arange(flat.shape[1], device=score.device)[None, :]
    keep_in_order = rank < torch.tensor(counts, device=score.device)[:, None]
    mask = torch.zeros_like(ok).scatter(1, order, keep_in_order)
    return mask.view(out_shape)
