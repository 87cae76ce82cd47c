"""How a victim is trained and run (:class:`TrainConfig`), and the checks of its data.

Data come as numpy arrays: images ``(N, C, *spatial)`` float32 in [0, 1]; targets are label
maps ``(N, *spatial)`` (segmentation) or class indices ``(N,)`` (classification).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ulmed.choices import StrEnum, look_up
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError


class Optimizer(StrEnum):
    """The optimiser a victim trains with."""

    #: Adam with ``weight_decay`` as L2 penalty.
    ADAM = "adam"
    #: SGD with ``momentum``.
    SGD = "sgd"


@dataclass
class TrainConfig:
    """How a victim is trained and run.

    Args:
        epochs: Passes over the training samples.
        batch_size: Samples (or patches) per step; also the sliding-window batch size.
        lr: Learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum ``momentum``); an :class:`Optimizer`.
        weight_decay: L2 weight decay.
        momentum: SGD momentum.
        seed: Seed of shuffling, augmentation, patch sampling and dropout.
        device: ``auto|cpu|cuda|cuda:N|mps``.
        val_fraction: Share of the training samples held out to report a validation loss
            each epoch (0 = none).
        patience: Stop after this many epochs without a better validation loss and restore
            the best weights (needs ``val_fraction > 0``); None = train all epochs.
        patch_size: Random patch size for segmentation training and sliding-window
            inference; None = whole images/volumes.
        pos_neg: Odds of patch centres on foreground vs background.
        sw_overlap: Overlap of sliding windows.
        amp: Mixed precision (autocast; loss scaling on CUDA).
        num_threads: torch CPU threads during the call (restored after); None = unchanged.

    Raises:
        ConfigError: A setting out of its range, an unknown optimiser or device.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: Optimizer | str = Optimizer.ADAM
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.0
    patience: int | None = None
    patch_size: tuple[int, ...] | None = None
    pos_neg: tuple[float, float] = (1.0, 1.0)
    sw_overlap: float = 0.25
    amp: bool = False
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig: {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig: lr must be > 0, got {self.lr!r}")
        self.optimizer = look_up(self.optimizer, Optimizer, "TrainConfig: optimizer")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.sw_overlap < 1:
            raise ConfigError("TrainConfig: weight_decay must be >= 0, momentum and sw_overlap in [0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"TrainConfig: val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.patience is not None and (self.patience < 1 or self.val_fraction == 0):
            raise ConfigError("TrainConfig: patience must be >= 1 and needs val_fraction > 0 (a set to watch)")
        if self.patch_size is not None:
            self.patch_size = tuple(int(s) for s in self.patch_size)
            if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
                raise ConfigError(f"TrainConfig: patch_size must have 2 or 3 positive sizes, got {self.patch_size}")
        if len(self.pos_neg) != 2 or min(self.pos_neg) < 0 or sum(self.pos_neg) <= 0:
            raise ConfigError(f"TrainConfig: pos_neg must be two non-negative odds, not both 0, got {self.pos_neg}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"TrainConfig: num_threads must be >= 1, got {self.num_threads!r}")
        if not isinstance(self.device, str) or not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", self.device):
            raise ConfigError(f"TrainConfig: device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The configured optimiser over ``params``."""
        if self.optimizer is Optimizer.ADAM:
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


def check_data(images: np.ndarray, targets: np.ndarray | None, task: str | Task, num_classes: int | None) -> Task:
    """Validate shapes, dtypes and label ranges; returns the task as a :class:`Task`.

    Raises:
        ConfigError: An unknown task, or data that does not fit it.
    """
    task = look_up(task, Task, "task")
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (background included), got {num_classes}")
    if not isinstance(images, np.ndarray) or images.ndim not in (4, 5):
        raise ConfigError("images must be a numpy array (N, C, H, W) or (N, C, D, H, W)")
    if images.shape[0] == 0:
        raise ConfigError("images is empty")
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if targets is not None:
        _check_targets(images, targets, task, num_classes)
    return task


def _check_targets(images: np.ndarray, targets: np.ndarray, task: Task, num_classes: int | None) -> None:
    expected = (images.shape[0],) + (images.shape[2:] if task is Task.SEGMENTATION else ())
    if targets.shape != expected:
        raise ConfigError(f"{task.value} targets must have shape {expected} for images {images.shape}, "
                          f"got {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ConfigError(f"targets must be integer labels, got dtype {targets.dtype}")
    if num_classes is not None and (targets.min() < 0 or targets.max() >= num_classes):
        raise ConfigError(f"target labels must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}")


def as_target_batch(y: torch.Tensor, task: Task) -> torch.Tensor:
    """Targets as the task's loss takes them: label maps get a channel axis ``(B, 1, *spatial)``."""
    return y.unsqueeze(1) if task is Task.SEGMENTATION else y
