"""The one PGD loop of the code base, and the gradient functions it can use.

:func:`perturb` is a pure function in the style of advertorch's ``perturb_iterative``:
the loss is injected, ``minimize=True`` gives error-minimising noise and
``minimize=False`` adversarial noise. Methods differ only in the policies they pass:
which positions may move (``position_mask``, ``select_positions``), which budget
(``eps`` as a float or a per-position map) and how the gradient is computed (``grad_fn``,
e.g. :class:`WindowedGrad` for volumes that do not fit in memory at once).

Layout: images and perturbations are ``(B, C, *spatial)``; position masks are
``(B or 1, 1, *spatial)`` and broadcast over channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.data.utils import dense_patch_slices

from ulmed.core.projection import (
    clamp_l2,
    clamp_linf,
    clamp_valid,
    l0_mask_topk,
    l2_norms,
)
from ulmed.core.tasks import NORMS
from ulmed.errors import ConfigError

#: ``loss_fn(x_adv) -> scalar loss`` (a closure over the model and the target).
LossFn = Callable[[torch.Tensor], torch.Tensor]
#: ``grad_fn(x, delta) -> d loss / d delta`` (shaped like ``delta``).
GradFn = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
#: ``select_positions(step, grad, delta) -> mask`` of positions that may be non-zero, or
#: ``None`` to keep the previous mask.
SelectFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]
#: ``loss_fn_window(x_adv_window, window) -> scalar``; ``window`` holds the spatial slices.
WindowLossFn = Callable[[torch.Tensor, tuple[slice, ...]], torch.Tensor]

SCHEDULES = ("constant", "dynamic")
#: ``step_size(step) -> size`` of PGD step ``step`` (0-based).
StepSchedule = Callable[[int], float]


def step_schedule(kind: str, base: float, n_steps: int) -> float | StepSchedule:
    """The step size of each PGD step.

    ``"constant"`` returns ``base``. ``"dynamic"`` (after ARMOR's dynamic step size) starts
    at ``2 * base`` and decays with a half cosine to ``base / 5`` at the last step: large
    early steps move the noise to a new basin (the surrogate has changed since the last
    round), small late steps settle it inside the budget.

    Raises:
        ConfigError: Unknown kind, ``base <= 0`` or ``n_steps < 1``.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"step schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if not base > 0 or n_steps < 1:
        raise ConfigError(f"a step schedule needs base > 0 and n_steps >= 1, got {base} and {n_steps}")
    if kind == "constant":
        return base
    high, low = 2.0 * base, base / 5.0

    def size(step: int) -> float:
        t = min(max(step, 0), n_steps - 1) / max(n_steps - 1, 1)
        return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * t))

    return size


def autograd_grad(loss_fn: LossFn) -> GradFn:
    """The plain gradient function: one forward and backward pass over ``x + delta``.

    Only ``delta`` receives a gradient; the model's parameters' ``.grad`` stay untouched.
    """

    def grad(x: torch.Tensor | None, delta: torch.Tensor) -> torch.Tensor:
        if x is None:
            raise ConfigError("the default gradient needs the clean images x; pass grad_fn when x is None")
        d = delta.detach().requires_grad_(True)
        loss = loss_fn(x + d)
        (g,) = torch.autograd.grad(loss, d)
        return g

    return grad


def _step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / l2_norms(grad).clamp_min(1e-12)


def _project(
    x: torch.Tensor | None, delta: torch.Tensor, eps: float | torch.Tensor, norm: str, lo: float, hi: float
) -> torch.Tensor:
    delta = clamp_linf(delta, eps) if norm == "linf" else clamp_l2(delta, eps)
    return delta if x is None else clamp_valid(x, delta, lo, hi)


def _random_start(delta: torch.Tensor, eps: float | torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype)
    r = torch.rand((delta.shape[0],) + (1,) * (delta.dim() - 1), generator=generator, device=delta.device, dtype=delta.dtype)
    return g / l2_norms(g).clamp_min(1e-12) * r * (eps if not isinstance(eps, torch.Tensor) else eps.reshape(-1, *r.shape[1:]))


def perturb(
    x: torch.Tensor | None,
    delta: torch.Tensor,
    loss_fn: LossFn | None,
    *,
    eps: float | torch.Tensor,
    step_size: float | StepSchedule,
    n_steps: int,
    minimize: bool = True,
    norm: str = "linf",
    position_mask: torch.Tensor | None = None,
    select_positions: SelectFn | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    grad_fn: GradFn | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
) -> torch.Tensor:
    """Run ``n_steps`` of projected gradient descent (or ascent) on ``delta``.

    Each step: gradient of the loss at ``x + delta``; optional re-selection of the
    positions that may move; a sign step (L-inf) or normalised-gradient step (L2) of size
    ``step_size`` against the gradient when ``minimize`` (along it otherwise); projection
    onto the ``eps`` ball and onto the valid range ``[lo, hi]`` of ``x + delta``.

    Args:
        x: Clean images ``(B, C, *spatial)`` in ``[lo, hi]``. May be ``None`` when
            ``grad_fn`` is given and ``delta`` is not tied to one image (class-wise noise);
            the valid-range projection is then skipped.
        delta: Initial perturbation, shaped like ``x`` (``(K, C, *spatial)`` when ``x`` is None).
        loss_fn: ``loss_fn(x_adv) -> scalar``; unused when ``grad_fn`` is given.
        eps: Budget: a float, or for L-inf a tensor map broadcastable to ``delta``, for
            L2 one radius per sample.
        step_size: Size of each step (L-inf: per element; L2: of the whole sample), or
            a schedule ``step -> size`` (:func:`step_schedule`).
        n_steps: Number of steps (0 only projects the initial ``delta``).
        minimize: Descend the loss (error-minimising noise) or ascend it.
        norm: ``"linf"`` or ``"l2"``.
        position_mask: Fixed mask of positions allowed to move, ``(B or 1, 1, *spatial)``
            or broadcastable to ``delta``; boolean, or float where 0 freezes a position
            and a positive value scales its step. Frozen positions keep their initial value.
        select_positions: ``(step, grad, delta) -> mask`` called every step (before the
            update) with the current gradient; positions outside the returned mask (and
            inside ``position_mask``) are reset to zero, so the L0 size of ``delta`` is
            bounded by the mask. Returning ``None`` keeps the previous mask, which lets
            a policy re-select only every K steps.
        random_start: Start from uniform noise in the ball (inside ``position_mask``).
        generator: Random generator for ``random_start`` (on ``delta``'s device).
        grad_fn: ``grad_fn(x, delta) -> grad``; default: autograd through ``loss_fn``.
        lo: Lower end of the valid range.
        hi: Upper end of the valid range.

    Returns:
        The final perturbation, detached, shaped like ``delta``.

    Raises:
        ConfigError: Invalid norm, step size, step count or missing loss.
    """
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    size_of: StepSchedule = step_size if callable(step_size) else (lambda _step: float(step_size))  # type: ignore[arg-type]
    if n_steps < 0 or not (callable(step_size) or step_size > 0):
        raise ConfigError(f"PGD needs n_steps >= 0 and step_size > 0, got {n_steps} and {step_size}")
    if grad_fn is None:
        if loss_fn is None:
            raise ConfigError("perturb needs a loss_fn or a grad_fn")
        grad_fn = autograd_grad(loss_fn)
    if x is not None and x.shape != delta.shape:
        raise ConfigError(f"delta of shape {tuple(delta.shape)} does not match images of shape {tuple(x.shape)}")

    start = delta.detach().clone()
    weight = None if position_mask is None else position_mask.to(device=delta.device, dtype=delta.dtype)
    movable = None if weight is None else torch.broadcast_to(weight != 0, delta.shape)

    def keep_frozen(d: torch.Tensor) -> torch.Tensor:
        return d if movable is None else torch.where(movable, d, start)

    d = start
    if random_start:
        d = keep_frozen(start + _random_start(start, eps, norm, generator))
    d = keep_frozen(_project(x, d, eps, norm, lo, hi))
    selected: torch.Tensor | None = None
    sign = -1.0 if minimize else 1.0
    for step in range(n_steps):
        grad = grad_fn(x, d).detach()
        if select_positions is not None:
            new = select_positions(step, grad, d)
            if new is not None:
                selected = new.to(device=d.device, dtype=torch.bool)
            if selected is None:
                raise ConfigError("select_positions returned None before it chose any positions")
        # Only positions that may move shape the step (this matters to the L2 normalisation).
        if movable is not None:
            grad = grad * movable
        if selected is not None:
            grad = grad * selected
        direction = _step_direction(grad, norm)
        if weight is not None:
            direction = direction * weight
        d = d + sign * size_of(step) * direction
        if selected is not None:
            d = d * selected
        d = keep_frozen(_project(x, d, eps, norm, lo, hi))
    return d.detach()


def topk_selector(fraction: float, every: int = 1, allowed: torch.Tensor | None = None) -> SelectFn:
    """A ``select_positions`` policy: the top ``fraction`` of positions by ``|grad|``.

    The positions are re-chosen at steps ``0, every, 2 * every, ...`` and kept in between.
    SALM plugs in the same way with a smoothed saliency instead of the raw gradient.

    Args:
        fraction: Share of the (allowed) positions that may move, in ``[0, 1]``.
        every: Re-select every this many steps.
        allowed: Optional boolean mask ``(B or 1, 1, *spatial)`` of candidate positions.
    """
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")

    def select(step: int, grad: torch.Tensor, delta: torch.Tensor) -> torch.Tensor | None:
        if step % every:
            return None
        return l0_mask_topk(grad.abs(), fraction, allowed)

    return select


class WindowedGrad:
    """A memory-bounded ``grad_fn``: the loss gradient over sliding windows, one at a time.

    The volume is covered by windows of ``roi_size`` (MONAI's dense patch grid, the same
    as in sliding-window inference); each window runs forward and backward alone and its
    gradient is added into a full-size buffer, which is then divided by how many windows
    cover each position. ``loss_fn_window`` must return the window's *sum* of per-position
    losses (e.g. ``reduction="sum"``): the result is then exactly the gradient of the
    whole-volume loss for a model without context beyond a window (a 1x1x1 convolution),
    and the overlap-averaged window gradient otherwise. Peak memory is one window's graph,
    so any volume size fits.

    Args:
        loss_fn_window: ``(x_adv_window, window) -> scalar``; ``window`` is the tuple of
            spatial slices, so a closure can cut the matching part of the target.
        roi_size: Window size per spatial axis (clipped to the image size).
        overlap: Overlap of neighbouring windows, in ``[0, 1)``.
    """

    def __init__(self, loss_fn_window: WindowLossFn, roi_size: Sequence[int], overlap: float = 0.25) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must lie in [0, 1), got {overlap}")
        if not roi_size or any(int(r) < 1 for r in roi_size):
            raise ConfigError(f"roi_size must be positive per axis, got {tuple(roi_size)}")
        self.loss_fn_window = loss_fn_window
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = float(overlap)

    def windows(self, spatial_shape: Sequence[int]) -> list[tuple[slice, ...]]:
        """The window grid for an image of ``spatial_shape``."""
        if len(spatial_shape) != len(self.roi_size):
            raise ConfigError(f"roi_size {self.roi_size} has {len(self.roi_size)} axes but the image has {len(spatial_shape)}")
        roi = [min(r, s) for r, s in zip(self.roi_size, spatial_shape, strict=True)]
        interval = [max(int(r * (1 - self.overlap)), 1) for r in roi]
        return [tuple(slice(int(s.start), int(s.stop)) for s in w) for w in dense_patch_slices(spatial_shape, roi, interval)]

    def __call__(self, x: torch.Tensor | None, delta: torch.Tensor) -> torch.Tensor:
        """Gradient of the windowed loss with respect to ``delta`` (shaped like it)."""
        if x is None:
            raise ConfigError("WindowedGrad needs the clean images x")
        spatial = tuple(x.shape[2:])
        grad = torch.zeros_like(delta, dtype=torch.float32)
        count = torch.zeros(spatial, dtype=torch.float32, device=delta.device)
        for window in self.windows(spatial):
            index = (slice(None), slice(None), *window)
            d = delta[index].detach().requires_grad_(True)
            loss = self.loss_fn_window(x[index] + d, window)
            (g,) = torch.autograd.grad(loss, d)
            grad[index] += g.float()
            count[window] += 1
        return (grad / count).to(delta.dtype)


def windowed_grad(
    x: torch.Tensor, delta: torch.Tensor, loss_fn_window: WindowLossFn, roi_size: Sequence[int], overlap: float = 0.25
) -> torch.Tensor:
    """One call of :class:`WindowedGrad` (see there)."""
    return WindowedGrad(loss_fn_window, roi_size, overlap)(x, delta)
