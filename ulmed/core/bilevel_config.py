"""The settings and hooks of the min-min loop (:func:`ulmed.core.bilevel.min_min`), and the types they name.

:class:`MinMinConfig` holds the loop's numbers and choices, validated when built;
:class:`MinMinHooks` holds what a method plugs in (a budget map, a position policy such as
SALM's, class ids, a PGD objective, a progress callback).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ulmed.choices import look_up
from ulmed.core.checks import check_count
from ulmed.core.device import resolve_device
from ulmed.core.pgd import Schedule, SelectFn
from ulmed.core.tasks import Norm
from ulmed.errors import ConfigError

__all__ = ["AugmentFn", "MetricFn", "MinMinConfig", "MinMinHooks", "Objective", "PositionPolicy", "TrainLoss"]


#: ``loss_fn(output, target) -> scalar`` (mean over the batch), e.g. a MONAI ``DiceCELoss``.
TrainLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``metric_fn(output, target) -> float`` (batch mean, higher is better): accuracy, Dice.
MetricFn = Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor]
#: ``augment(images, targets) -> (images, targets)``: random, differentiable in the images.
AugmentFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``objective(model, x_adv, target) -> scalar`` that PGD minimises instead of the training loss.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class PositionPolicy(Protocol):
    """Which positions may move, per PGD batch (SALM plugs in here).

    Called as ``policy(indices, x)``: ``indices`` are the data-set indices of the batch
    (class ids for class-wise noise, with ``x`` None) and ``x`` the clean batch on the
    device. Returns ``(position_mask, select_positions)`` for :func:`ulmed.core.pgd.perturb`;
    either may be None.
    """

    def __call__(
        self, indices: torch.Tensor, x: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, SelectFn | None]: ...


@dataclass(frozen=True)
class MinMinConfig:
    """Settings of the min-min loop, validated when built.

    Args:
        eps: Budget in [0, 1] units (L-inf radius, or L2 radius per sample).
        step_size: PGD step; default ``eps / LOOP_STEP_DIVISOR`` (of the largest budget in an
            eps map; :data:`ulmed.core.pgd.LOOP_STEP_DIVISOR`).
        train_steps: Surrogate training steps (M) per round.
        pgd_steps: PGD steps (N) per round.
        max_rounds: Most rounds before giving up on the threshold.
        stop_threshold: Stop once the surrogate's metric on the perturbed data is >= this.
        batch_size: Mini-batch size of training, PGD and evaluation (bounds memory).
        lr: Learning rate of the SGD optimiser built when none is given.
        seed: Seed of batch sampling, random starts and the surrogate's own randomness.
        norm: ``"linf"`` or ``"l2"`` (a :class:`~ulmed.core.tasks.Norm`).
        random_start: Start each PGD run from random noise in the ball.
        eot_samples: Random augmentations averaged per PGD step (with ``augment``).
        step_schedule: ``"constant"`` or ``"dynamic"`` (see :func:`ulmed.core.pgd.step_schedule`).
        classwise: One noise per class id instead of one per image.
        device: Where the surrogate runs (``"auto"``, ``"cuda"``, a :class:`torch.device`).
        amp: Mixed precision (bfloat16, or float16 with loss scaling); only on CUDA.
        cell: The noise moves in cells of this many positions per spatial axis
            (:class:`ulmed.core.pgd.PGDConfig`); 1: every position.

    Raises:
        ConfigError: A setting out of its range, an unknown norm, schedule or device.
    """

    eps: float = 8 / 255
    step_size: float | None = None
    train_steps: int = 10
    pgd_steps: int = 20
    max_rounds: int = 10
    stop_threshold: float = 0.99
    batch_size: int = 16
    lr: float = 0.1
    seed: int = 0
    norm: Norm | str = Norm.LINF
    random_start: bool = False
    eot_samples: int = 1
    step_schedule: Schedule | str = Schedule.CONSTANT
    classwise: bool = False
    device: str | torch.device = "cpu"
    amp: bool = False
    cell: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", look_up(self.norm, Norm, "norm"))
        object.__setattr__(self, "step_schedule", look_up(self.step_schedule, Schedule, "step_schedule"))
        if not (math.isfinite(self.eps) and self.eps > 0) or (self.norm is Norm.LINF and self.eps > 1):
            raise ConfigError(f"eps must be > 0 (and <= 1 for L-inf, in [0, 1] units), got {self.eps}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        for name in ("pgd_steps", "max_rounds", "batch_size", "eot_samples", "cell"):
            check_count(name, getattr(self, name), 1)
        check_count("train_steps", self.train_steps, 0)
        check_count("seed", self.seed, 0)
        if not math.isfinite(self.stop_threshold):
            raise ConfigError(f"stop_threshold must be a finite number, got {self.stop_threshold}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.device, str):
            resolve_device(self.device)  # an unknown or absent device fails here, not mid-run

    def torch_device(self) -> torch.device:
        """:attr:`device` as a :class:`torch.device`."""
        return resolve_device(self.device) if isinstance(self.device, str) else self.device


@dataclass(frozen=True)
class MinMinHooks:
    """What a method plugs into the min-min loop beyond its settings (all optional).

    Args:
        eps_map: Per-position L-inf budget replacing ``config.eps``: broadcastable to one
            item's noise, or one row per item (``N`` rows; ``K`` class-wise); for L2 one
            radius per row.
        position_policy: Positions allowed to move per PGD batch (see :class:`PositionPolicy`).
        class_ids: ``(N,)`` class id per image for class-wise noise; default the targets.
        objective: ``(model, x_adv, target) -> scalar`` that PGD minimises instead of the
            training loss (e.g. minus a Bayes-error estimate, :mod:`ulmed.core.objectives`);
            the surrogate still trains on the training loss.
        progress: Called with each round's history entry.
    """

    eps_map: torch.Tensor | None = None
    position_policy: PositionPolicy | None = None
    class_ids: torch.Tensor | None = None
    objective: Objective | None = None
    progress: Callable[[dict[str, float]], None] | None = None
