"""Training a segmentation or classification victim on (possibly protected) images.

Data come as numpy arrays: images ``(N, C, *spatial)`` float32 in [0, 1]; targets are label
maps ``(N, *spatial)`` (segmentation) or class indices ``(N,)`` (classification). Losses:
:func:`ulmed.core.tasks.task_loss` (DiceCE for segmentation, cross-entropy for
classification). The steps are those of the one training loop,
:func:`ulmed.core.training.train_steps`; batches come from :mod:`ulmed.eval.patches`
(augmentation, random patches) and prediction from :mod:`ulmed.eval.predict` (whose
functions, with :class:`TrainConfig`, this module re-exports).

Determinism: on the CPU a run is a function of ``config.seed`` (and the initial weights; see
``build_victim(seed=...)``). ``torch.manual_seed`` covers dropout, a ``torch.Generator``
shuffles, a ``numpy.random.Generator`` drives the augmentation callable, and MONAI's patch
sampler is seeded from it. GPU kernels may still be non-deterministic.

Batches: the training order is reshuffled every epoch; a final batch of a single sample is
skipped (BatchNorm cannot train on it) -- that sample is seen in other epochs.

Threads: on a small shared CPU, set ``num_threads=1``; two OpenMP threads competing with
another busy process ran a small UNet step about 25x slower than one thread.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import RandCropByPosNegLabel
from torch import nn

from ulmed.core.device import resolve_device, threads
from ulmed.core.tasks import Task, task_loss
from ulmed.core.training import Precision, train_steps
from ulmed.errors import ConfigError
from ulmed.eval.patches import Augment, patch_crop, training_batch
from ulmed.eval.predict import evaluate_victim, mean_loss, predict, victim_sal
from ulmed.eval.train_config import TrainConfig, check_data

__all__ = ["Augment", "TrainConfig", "evaluate_victim", "predict", "train_victim", "victim_sal"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class _Data:
    """The training data of one run and how its batches are made (the run's random streams included)."""

    images: np.ndarray
    targets: np.ndarray
    task: Task
    augment: Augment | None
    crop: RandCropByPosNegLabel | None
    rng: np.random.Generator
    device: torch.device
    batch_size: int

    def batches(self, order: np.ndarray) -> Iterator[Batch]:
        """The batches of one epoch in ``order`` on the device; a lone last sample is skipped."""
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if len(idx) == 1 and len(order) > 1 and self.batch_size > 1:
                continue
            x, y = training_batch(self.images, self.targets, idx, self.task, self.augment, self.crop, self.rng)
            yield x.to(device=self.device), y.to(device=self.device)


@dataclass
class _EarlyStop:
    """The best validation loss so far, its weights and the epochs since (``patience`` None: never stop)."""

    patience: int | None
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    stale: int = 0

    def update(self, val_loss: float, model: nn.Module) -> None:
        if self.best is None or val_loss < self.best[0]:
            self.best, self.stale = (val_loss, copy.deepcopy(model.state_dict())), 0
        else:
            self.stale += 1

    @property
    def done(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.patience is not None and self.best is not None:
            model.load_state_dict(self.best[1])


def _check_inputs(images: np.ndarray, targets: np.ndarray, task: str | Task, num_classes: int,
                  config: TrainConfig) -> Task:
    task = check_data(images, targets, task, num_classes)
    if config.patch_size is not None and task is not Task.SEGMENTATION:
        raise ConfigError("patch_size is for segmentation; set it to None for classification")
    if not np.isfinite(images).all() or images.min() < -1e-4 or images.max() > 1 + 1e-4:
        raise ConfigError("images must be finite and lie in [0, 1]; normalise them first")
    return task


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Validation (sorted) and training indices from one shuffle drawn from ``gen``."""
    order = torch.randperm(n, generator=gen).numpy()
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ConfigError(f"val_fraction {val_fraction} leaves no training samples out of {n}")
    return np.sort(order[:n_val]), order[n_val:]


def _batch_loss(model: nn.Module, loss_fn: nn.Module, num_classes: int,
                precision: Precision) -> Callable[[Batch], torch.Tensor]:
    """``loss_fn`` of one batch, the forward pass under autocast; a model of the wrong width fails."""

    def loss_of(batch: Batch) -> torch.Tensor:
        x, y = batch
        with precision.autocast():
            out = model(x)
        if out.shape[1] != num_classes:
            raise ConfigError(f"the model outputs {out.shape[1]} channels but num_classes is {num_classes}")
        return loss_fn(out.float(), y)

    return loss_of


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, data: _Data,
           loss_of: Callable[[Batch], torch.Tensor], order: np.ndarray) -> float:
    """One pass over the training samples in ``order``; the mean training loss per sample."""
    model.train()
    total, seen = 0.0, 0
    for (x, _), loss in train_steps(optimizer, data.batches(order), loss_of, scaler=scaler):
        total += loss * x.shape[0]
        seen += x.shape[0]
    return total / max(seen, 1)


def _fit(model: nn.Module, data: _Data, config: TrainConfig, num_classes: int, gen: torch.Generator,
         split: tuple[np.ndarray, np.ndarray], progress: bool) -> list[dict[str, float]]:
    """The epochs: train, validate, stop early; the history (best weights restored with ``patience``)."""
    val_idx, train_idx = split
    loss_fn = task_loss(data.task)
    model.to(data.device)
    optimizer = config.build_optimizer([p for p in model.parameters() if p.requires_grad])
    precision = Precision(data.device.type, config.amp)
    scaler, loss_of = precision.scaler(), _batch_loss(model, loss_fn, num_classes, precision)
    history: list[dict[str, float]] = []
    stop = _EarlyStop(config.patience)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        row = {"epoch": float(epoch), "loss": _epoch(model, optimizer, scaler, data, loss_of, order)}
        if len(val_idx):
            row["val_loss"] = mean_loss(model, data.images[val_idx], data.targets[val_idx], data.task, config, loss_fn)
            stop.update(row["val_loss"], model)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if progress:
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), file=sys.stderr)
        if stop.done:
            break
    stop.restore(model)
    return history


def train_victim(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str | Task,
    num_classes: int,
    config: TrainConfig,
    augment: Augment | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` in place on (possibly protected) images.

    Args:
        model: A victim from :func:`ulmed.eval.victims.build_victim` (any module mapping
            ``(B, C, *spatial)`` to ``num_classes`` logits per pixel or per image).
        images: ``(N, C, *spatial)`` float32 in [0, 1].
        targets: Label maps ``(N, *spatial)`` or class indices ``(N,)``, integers.
        task: ``"segmentation"`` or ``"classification"``.
        num_classes: Classes including background.
        config: Training settings.
        augment: Per-sample augmentation applied before patch cropping, e.g.
            ``ulmed.eval.defenses.DEFENSES.get("augmentation")().augment``.
        progress: Print one line per epoch to stderr.

    Returns:
        History, one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``seconds``,
        and ``val_loss`` when a validation set is held out. The model ends in eval mode,
        with the best validation weights restored when ``config.patience`` is set.

    Raises:
        ConfigError: Data, task, patch size or model width that do not fit.
    """
    task = _check_inputs(images, targets, task, num_classes, config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    split = _split(images.shape[0], config.val_fraction, gen)
    crop = patch_crop(config, images.shape[2:], rng) if config.patch_size is not None else None
    data = _Data(images, targets, task, augment, crop, rng, device, config.batch_size)
    with threads(config.num_threads):
        history = _fit(model, data, config, num_classes, gen, split, progress)
    model.eval()
    return history
