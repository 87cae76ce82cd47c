"""The options of the min-min methods (em, salm), in one validated dataclass.

:class:`OptimisedOptions` is what ``--set KEY=VALUE`` sets for ``em`` and ``salm``: the
surrogate, the min-min schedule, tiling, the trainer's augmentation and the PGD objective.
Every field is checked when the options are built, before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ulmed.choices import look_up
from ulmed.core.augment import AugmentPolicy
from ulmed.core.checks import check_count
from ulmed.core.objectives import Objective
from ulmed.core.pgd import METHOD_STEP_DIVISOR, Schedule
from ulmed.core.surrogates import SURROGATE_TASK, UNET_MULTIPLE
from ulmed.errors import ConfigError

#: The ``augment`` value that chooses the augmentation per class (ARMOR, :mod:`ulmed.core.selection`).
ARMOR = "armor"
#: How the noise starts, as the manifests record it: always zeros (the warm starts were removed).
START = "zero"


@dataclass(frozen=True)
class OptimisedOptions:
    """Settings of :class:`ulmed.core.optimised.OptimisedMethod` (``--set`` keys of em and salm).

    Args:
        surrogate: MONAI surrogate by name; default ``unet`` for masks/label maps and
            label-free data (``dynunet``: nnU-Net's architecture, measured weaker on HC18),
            ``resnet18`` for class labels.
        rounds: Most min-min rounds.
        train_steps: Surrogate steps per round (M).
        pgd_steps: PGD steps per round (N).
        step_size: PGD step in [0, 1] units; default ``eps / METHOD_STEP_DIVISOR``
            (:data:`ulmed.core.pgd.METHOD_STEP_DIVISOR`).
        stop_threshold: Stop when the surrogate's Dice (segmentation) or accuracy
            (classification) on the perturbed data reaches this; default 0.9 / 0.99.
        batch_size: Batch size of training and PGD (bounds memory).
        lr: Adam learning rate of the surrogate.
        classwise: One noise per class (classification only).
        tile_size: Cut images into tiles of this size (per spatial axis) instead of
            padding them to a common shape; bounds memory for large volumes.
        pseudo_classes: Bands of the label-free pseudo-targets.
        amp: Mixed precision on CUDA.
        augment: The trainer's augmentation to optimise against (expectation over
            transformations): a preset of :mod:`ulmed.core.augment` (``none``,
            ``flip_jitter``, ``standard``, ``robust``), a mapping of its fields, or
            ``armor``: after one plain round, the candidate of :mod:`ulmed.core.selection`
            with the best gradient alignment is chosen per class (per data set for masks).
        eot_samples: Augmentation draws averaged per PGD step.
        step_schedule: PGD step sizes, ``constant`` or ``dynamic`` (large, then small).
        objective: ``loss`` (error-minimising: PGD lowers the surrogate's training loss) or
            ``bayes`` (PGD raises a leave-one-out kernel estimate of the Bayes error of the
            surrogate's last hidden features, per sampled pixel for segmentation, per image
            for classification), aimed at trainers who mix protected with clean data.
        bayes_per_class: Pixels sampled per class and batch for the segmentation estimate.
        cell: The noise is one value per cell of ``cell`` positions along every spatial axis
            (the coarse parameterisation of issue 16: no finer than the smallest grid a
            trainer resizes to, so that its resize averages less of it); 1: every position.
            A ``tile_size`` must then be a multiple of it.

    Raises:
        ConfigError: An option out of its range or not one of its choices.
    """

    surrogate: str | None = None
    rounds: int = 10
    train_steps: int = 20
    pgd_steps: int = 10
    step_size: float | None = None
    stop_threshold: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    classwise: bool = False
    tile_size: Sequence[int] | int | None = None
    pseudo_classes: int = 3
    amp: bool = False
    augment: AugmentPolicy | str | dict[str, Any] | None = "none"
    eot_samples: int = 1
    step_schedule: str = "constant"
    objective: str = "loss"
    bayes_per_class: int = 64
    cell: int = 1

    def __post_init__(self) -> None:
        if self.surrogate is not None and self.surrogate not in SURROGATE_TASK:
            raise ConfigError(f"unknown surrogate {self.surrogate!r}; choose one of {', '.join(SURROGATE_TASK)}")
        object.__setattr__(self, "objective", look_up(self.objective, Objective, "objective"))
        object.__setattr__(self, "step_schedule", look_up(self.step_schedule, Schedule, "step_schedule"))
        for name, minimum in (("rounds", 1), ("train_steps", 0), ("pgd_steps", 1), ("batch_size", 1),
                              ("eot_samples", 1), ("bayes_per_class", 1), ("pseudo_classes", 2), ("cell", 1)):
            check_count(name, getattr(self, name), minimum)
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if self.stop_threshold is not None and not math.isfinite(self.stop_threshold):
            raise ConfigError(f"stop_threshold must be a finite number, got {self.stop_threshold}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.tile_size is not None and (np.ndim(self.tile_size) == 0 and int(self.tile_size) < UNET_MULTIPLE):
            raise ConfigError(f"tile_size must be >= {UNET_MULTIPLE}, got {self.tile_size}")
        if self.tile_size is not None and any(int(t) % self.cell for t in np.atleast_1d(self.tile_size)):
            raise ConfigError(f"tile_size {self.tile_size} must be a multiple of cell {self.cell}, or the tiles "
                              "would cut the noise's cells")
        self.policy()  # an unknown preset or field fails here

    def policy(self) -> AugmentPolicy:
        """The fixed augmentation to optimise against (the identity with ``armor``: the first round has none)."""
        return AugmentPolicy.from_spec(None if self.augment == ARMOR else self.augment)

    def params(self, policy: AugmentPolicy) -> dict[str, Any]:
        """The options as a run's manifest records them (``policy``: :meth:`policy`)."""
        return {
            "surrogate": self.surrogate or "auto", "rounds": self.rounds, "train_steps": self.train_steps,
            "pgd_steps": self.pgd_steps, "step_size": self.step_size or f"eps/{METHOD_STEP_DIVISOR}",
            "stop_threshold": self.stop_threshold or "auto", "batch_size": self.batch_size, "lr": self.lr,
            "classwise": self.classwise, "tile_size": self.tile_size, "pseudo_classes": self.pseudo_classes,
            "init": START, "augment": ARMOR if self.augment == ARMOR else policy.to_dict(),
            "eot_samples": self.eot_samples, "step_schedule": self.step_schedule, "objective": self.objective,
            **({"cell": self.cell} if self.cell != 1 else {}),
            **({"bayes_per_class": self.bayes_per_class} if self.objective == Objective.BAYES else {}),
        }
