"""The one PGD loop of the code base, and the gradient functions it can use.

:func:`perturb` is a pure function in the style of advertorch's ``perturb_iterative``:
the loss is injected, ``minimize=True`` gives error-minimising noise and
``minimize=False`` adversarial noise. Its options live in a frozen :class:`PGDConfig`
(the budget, the steps, the norm); what differs between methods is passed as policies:
which positions may move (``position_mask``, ``select_positions``) and how the gradient
is computed (``grad_fn``, e.g. :class:`WindowedGrad` for volumes that do not fit in
memory at once). The projections are :mod:`ulmed.core.projection`'s.

Layout: images and perturbations are ``(B, C, *spatial)``; position masks are
``(B or 1, 1, *spatial)`` and broadcast over channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ulmed.choices import StrEnum, look_up
from ulmed.core.checks import check_count
from ulmed.core.projection import clamp_l2, clamp_linf, clamp_valid, l2_norms
from ulmed.core.tasks import Norm
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
#: ``step_size(step) -> size`` of PGD step ``step`` (0-based).
StepSchedule = Callable[[int], float]

#: The default PGD step is the budget divided by one of these two numbers. The min-min loop
#: (:class:`ulmed.core.bilevel.MinMinConfig`, 20 steps a round) and the working-grid pre-image
#: (:func:`ulmed.core.grid.preimage`) take ``eps / LOOP_STEP_DIVISOR``; em and salm
#: (:class:`ulmed.core.optimised.OptimisedMethod`, 10 steps a round) take
#: ``eps / METHOD_STEP_DIVISOR``. Both let the steps of one round at their default step count
#: cross the ball once (2 eps); they differ because their default step counts differ, and
#: each is kept so that the outputs stay as they were. The pre-image starts from the nearest
#: copy of its code and only refines it: lsp gives it 10 steps (``lsp.PREIMAGE_STEPS``).
LOOP_STEP_DIVISOR = 10
#: See :data:`LOOP_STEP_DIVISOR`.
METHOD_STEP_DIVISOR = 5


def default_step(eps: float, divisor: int = LOOP_STEP_DIVISOR) -> float:
    """The default PGD step for a budget ``eps``: ``eps / divisor`` (see :data:`LOOP_STEP_DIVISOR`)."""
    return eps / divisor


class Schedule(StrEnum):
    """How the PGD step size changes over the steps of a run."""

    #: The same size every step.
    CONSTANT = "constant"
    #: ARMOR's dynamic step size: large first, then small (see :func:`step_schedule`).
    DYNAMIC = "dynamic"


#: The schedule values, in definition order.
SCHEDULES: tuple[str, ...] = tuple(s.value for s in Schedule)


def step_schedule(kind: str | Schedule, base: float, n_steps: int) -> float | StepSchedule:
    """The step size of each PGD step.

    ``"constant"`` returns ``base``. ``"dynamic"`` (after ARMOR's dynamic step size) starts
    at ``2 * base`` and decays with a half cosine to ``base / 5`` at the last step: large
    early steps move the noise to a new basin (the surrogate has changed since the last
    round), small late steps settle it inside the budget.

    Raises:
        ConfigError: Unknown kind, ``base <= 0`` or ``n_steps < 1``.
    """
    kind = look_up(kind, Schedule, "step schedule")
    if not base > 0 or n_steps < 1:
        raise ConfigError(f"a step schedule needs base > 0 and n_steps >= 1, got {base} and {n_steps}")
    if kind is Schedule.CONSTANT:
        return base
    high, low = 2.0 * base, base / 5.0

    def size(step: int) -> float:
        t = min(max(step, 0), n_steps - 1) / max(n_steps - 1, 1)
        return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * t))

    return size


@dataclass(frozen=True)
class PGDConfig:
    """The options of one PGD run (advertorch's ``perturb_iterative`` arguments), validated.

    Args:
        eps: Budget: a float, or for L-inf a tensor map broadcastable to ``delta``, for L2
            one radius per sample.
        step_size: Size of each step (L-inf: per element; L2: of the whole sample), or a
            schedule ``step -> size`` (:func:`step_schedule`).
        n_steps: Number of steps (0 only projects the initial ``delta``).
        minimize: Descend the loss (error-minimising noise) or ascend it.
        norm: ``"linf"`` or ``"l2"`` (a :class:`~ulmed.core.tasks.Norm`).
        random_start: Start from uniform noise in the ball (inside the position mask).
        lo: Lower end of the valid range of ``x + delta``.
        hi: Upper end of the valid range.
        cell: The noise moves in cells of ``cell`` positions along every spatial axis: each
            step follows the gradient summed over a cell (:func:`cell_sums`), so a start that
            is constant on cells (zeros) stays so, up to the valid-range clamp. A coarse noise
            is one that a trainer's resize or warp averages less (issue 16); 1: every position.

    Raises:
        ConfigError: Unknown norm, ``n_steps < 0``, a step size that is not > 0 or ``cell < 1``.
    """

    eps: float | torch.Tensor
    step_size: float | StepSchedule
    n_steps: int
    minimize: bool = True
    norm: Norm | str = Norm.LINF
    random_start: bool = False
    lo: float = 0.0
    hi: float = 1.0
    cell: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", look_up(self.norm, Norm, "norm"))
        if self.n_steps < 0 or not (callable(self.step_size) or self.step_size > 0):
            raise ConfigError(f"PGD needs n_steps >= 0 and step_size > 0, got {self.n_steps} and {self.step_size}")
        check_count("cell", self.cell, 1)

    def size_of(self, step: int) -> float:
        """The step size of step ``step``."""
        return self.step_size(step) if callable(self.step_size) else float(self.step_size)

    def project(self, x: torch.Tensor | None, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` in the ``eps`` ball and, when ``x`` is given, with ``x + delta`` in ``[lo, hi]``."""
        delta = clamp_linf(delta, self.eps) if self.norm is Norm.LINF else clamp_l2(delta, self.eps)
        return delta if x is None else clamp_valid(x, delta, self.lo, self.hi)


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


def cell_sums(grad: torch.Tensor, cell: int) -> torch.Tensor:
    """``grad`` ``(B, C, *spatial)`` with every value replaced by the sum over its cell of ``cell`` positions per axis.

    The cells tile the spatial axes from index 0; the last cell of an axis that ``cell`` does not
    divide is shorter. A step along the result is constant on each cell: it is the steepest
    step for a noise that is one value per cell.
    """
    if cell == 1:
        return grad
    spatial = grad.shape[2:]
    pad: list[int] = []
    for n in reversed(spatial):  # F.pad takes the last axis first
        pad += [0, -n % cell]
    padded = torch.nn.functional.pad(grad, pad)
    blocks: list[int] = []
    for n in padded.shape[2:]:
        blocks += [n // cell, cell]
    sums = padded.reshape(*grad.shape[:2], *blocks).sum(dim=tuple(range(3, 2 + 2 * len(spatial), 2)), keepdim=True)
    full = sums.expand(*grad.shape[:2], *blocks).reshape(padded.shape)
    return full[(slice(None), slice(None), *(slice(0, n) for n in spatial))]


def step_direction(grad: torch.Tensor, norm: Norm | str) -> torch.Tensor:
    """The steepest-ascent direction of unit size: ``sign(grad)`` (L-inf) or ``grad / ||grad||`` (L2)."""
    if norm == Norm.LINF:
        return grad.sign()
    return grad / l2_norms(grad).clamp_min(1e-12)


def random_start(delta: torch.Tensor, eps: float | torch.Tensor, norm: Norm | str,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise in the L-inf cube, or a uniformly scaled random direction in the L2 ball."""
    if norm == Norm.LINF:
        u = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype)
    shape = (delta.shape[0],) + (1,) * (delta.dim() - 1)
    r = torch.rand(shape, generator=generator, device=delta.device, dtype=delta.dtype)
    radius = eps if not isinstance(eps, torch.Tensor) else eps.reshape(-1, *r.shape[1:])
    return g / l2_norms(g).clamp_min(1e-12) * r * radius


@dataclass(frozen=True)
class _Positions:
    """The fixed position mask of a run: ``weight`` scales steps, frozen positions keep ``start``."""

    start: torch.Tensor
    weight: torch.Tensor | None
    movable: torch.Tensor | None

    @classmethod
    def of(cls, start: torch.Tensor, position_mask: torch.Tensor | None) -> _Positions:
        if position_mask is None:
            return cls(start, None, None)
        weight = position_mask.to(device=start.device, dtype=start.dtype)
        return cls(start, weight, torch.broadcast_to(weight != 0, start.shape))

    def keep_frozen(self, d: torch.Tensor) -> torch.Tensor:
        return d if self.movable is None else torch.where(self.movable, d, self.start)


def _reselect(select: SelectFn | None, step: int, grad: torch.Tensor, d: torch.Tensor,
              selected: torch.Tensor | None) -> torch.Tensor | None:
    """The positions that may be non-zero after this step's call of ``select`` (None: no selector)."""
    if select is None:
        return None
    new = select(step, grad, d)
    if new is not None:
        selected = new.to(device=d.device, dtype=torch.bool)
    if selected is None:
        raise ConfigError("select_positions returned None before it chose any positions")
    return selected


def _step(d: torch.Tensor, grad: torch.Tensor, size: float, config: PGDConfig, positions: _Positions,
          selected: torch.Tensor | None) -> torch.Tensor:
    """One step of ``size`` against (``minimize``) or along the gradient, before projection."""
    # Only positions that may move shape the step (this matters to the L2 normalisation).
    if positions.movable is not None:
        grad = grad * positions.movable
    if selected is not None:
        grad = grad * selected
    direction = step_direction(grad, config.norm)
    if positions.weight is not None:
        direction = direction * positions.weight
    d = d + (-1.0 if config.minimize else 1.0) * size * direction
    return d if selected is None else d * selected


def perturb(
    x: torch.Tensor | None,
    delta: torch.Tensor,
    loss_fn: LossFn | None,
    config: PGDConfig,
    *,
    position_mask: torch.Tensor | None = None,
    select_positions: SelectFn | None = None,
    generator: torch.Generator | None = None,
    grad_fn: GradFn | None = None,
) -> torch.Tensor:
    """Run ``config.n_steps`` of projected gradient descent (or ascent) on ``delta``.

    Each step: gradient of the loss at ``x + delta``; optional re-selection of the positions
    that may move; a sign step (L-inf) or normalised-gradient step (L2) against the gradient
    when ``config.minimize`` (along it otherwise); projection onto the ``eps`` ball and the
    valid range.

    Args:
        x: Clean images ``(B, C, *spatial)`` in ``[lo, hi]``, or ``None`` when ``grad_fn`` is
            given and ``delta`` is not tied to one image (class-wise noise; no range projection).
        delta: Initial perturbation, shaped like ``x`` (``(K, C, *spatial)`` when ``x`` is None).
        loss_fn: ``loss_fn(x_adv) -> scalar``; unused when ``grad_fn`` is given.
        config: Budget, steps, norm and range (:class:`PGDConfig`).
        position_mask: Fixed mask of positions allowed to move, broadcastable to ``delta``;
            boolean, or float where 0 freezes a position and a positive value scales its
            step. Frozen positions keep their initial value.
        select_positions: ``(step, grad, delta) -> mask`` called every step before the update;
            positions outside the returned mask are reset to zero, so the L0 size of ``delta``
            is bounded by it. ``None`` keeps the previous mask (re-select every K steps).
        generator: Random generator for ``config.random_start`` (on ``delta``'s device).
        grad_fn: ``grad_fn(x, delta) -> grad``; default: autograd through ``loss_fn``.

    Returns:
        The final perturbation, detached, shaped like ``delta``.

    Raises:
        ConfigError: A missing loss, ``delta`` not shaped like ``x``, or a selector that
            returned None before choosing.
    """
    if grad_fn is None:
        if loss_fn is None:
            raise ConfigError("perturb needs a loss_fn or a grad_fn")
        grad_fn = autograd_grad(loss_fn)
    if x is not None and x.shape != delta.shape:
        raise ConfigError(f"delta of shape {tuple(delta.shape)} does not match images of shape {tuple(x.shape)}")
    positions = _Positions.of(delta.detach().clone(), position_mask)
    d = positions.start
    if config.random_start:
        d = positions.keep_frozen(d + random_start(d, config.eps, config.norm, generator))
    d = positions.keep_frozen(config.project(x, d))
    selected: torch.Tensor | None = None
    for step in range(config.n_steps):
        grad = cell_sums(grad_fn(x, d).detach(), config.cell)
        selected = _reselect(select_positions, step, grad, d, selected)
        d = _step(d, grad, config.size_of(step), config, positions, selected)
        d = positions.keep_frozen(config.project(x, d))
    return d.detach()


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
            raise ConfigError(
                f"roi_size {self.roi_size} has {len(self.roi_size)} axes but the image has {len(spatial_shape)}"
            )
        from monai.data.utils import dense_patch_slices  # MONAI takes seconds to import: only windowed methods need it

        roi = [min(r, s) for r, s in zip(self.roi_size, spatial_shape, strict=True)]
        interval = [max(int(r * (1 - self.overlap)), 1) for r in roi]
        grid = dense_patch_slices(spatial_shape, roi, interval)
        return [tuple(slice(int(s.start), int(s.stop)) for s in w) for w in grid]

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
