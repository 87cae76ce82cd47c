"""One training loop for segmentation and classification victims, prediction and evaluation.

Data come as numpy arrays: images ``(N, C, *spatial)`` float32 in [0, 1]; targets are label
maps ``(N, *spatial)`` (segmentation) or class indices ``(N,)`` (classification). Losses:
``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` for segmentation,
``torch.nn.CrossEntropyLoss`` for classification.

Determinism: on the CPU a run is a function of ``config.seed`` (and the initial weights; see
``build_victim(seed=...)``). ``torch.manual_seed`` covers dropout, a ``torch.Generator``
shuffles, a ``numpy.random.Generator`` drives the augmentation callable, and MONAI's patch
sampler is seeded from it. GPU kernels may still be non-deterministic.

Patch training (``config.patch_size``, segmentation only): each sample in a batch is a
random patch drawn with ``monai.transforms.RandCropByPosNegLabel`` (centre on foreground
or background with equal odds by default). Prediction then uses
``monai.inferers.sliding_window_inference`` over windows of that size.

Batches: the training order is reshuffled every epoch; a final batch of a single sample is
skipped (BatchNorm cannot train on it) -- that sample is seen in other epochs.

Threads: on a small shared CPU, set ``num_threads=1``; two OpenMP threads competing with
another busy process ran a small UNet step about 25x slower than one thread.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import RandCropByPosNegLabel
from torch import nn

from ulmed.core.device import resolve_device
from ulmed.core.tasks import TASKS, task_loss
from ulmed.errors import ConfigError
from ulmed.eval.learnability import GAMMA, sal_per_layer
from ulmed.eval.metrics import ClassificationMetrics, SegmentationMetrics

#: ``augment(image (C, *spatial), target (*spatial) array or int, rng) -> (image, target)``
Augment = Callable[[np.ndarray, Any, np.random.Generator], tuple[np.ndarray, Any]]


@dataclass
class TrainConfig:
    """How a victim is trained and run.

    Args:
        epochs: Passes over the training samples.
        batch_size: Samples (or patches) per step; also the sliding-window batch size.
        lr: Learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum ``momentum``).
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
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
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
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"TrainConfig: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n or old)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_data(images: np.ndarray, targets: np.ndarray | None, task: str, num_classes: int | None) -> None:
    """Validate shapes, dtypes and label ranges."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (background included), got {num_classes}")
    if not isinstance(images, np.ndarray) or images.ndim not in (4, 5):
        raise ConfigError("images must be a numpy array (N, C, H, W) or (N, C, D, H, W)")
    if images.shape[0] == 0:
        raise ConfigError("images is empty")
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if targets is not None:
        expected = (images.shape[0],) + (images.shape[2:] if task == "segmentation" else ())
        if targets.shape != expected:
            raise ConfigError(f"{task} targets must have shape {expected} for images {images.shape}, "
                              f"got {targets.shape}")
        if not np.issubdtype(targets.dtype, np.integer):
            raise ConfigError(f"targets must be integer labels, got dtype {targets.dtype}")
        if num_classes is not None and (targets.min() < 0 or targets.max() >= num_classes):
            raise ConfigError(f"target labels must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}")


def _patch_crop(config: TrainConfig, spatial: tuple[int, ...], rng: np.random.Generator) -> RandCropByPosNegLabel:
    patch = tuple(config.patch_size or ())
    if len(patch) != len(spatial) or any(p > s for p, s in zip(patch, spatial)):
        raise ConfigError(f"patch_size {patch} must have {len(spatial)} axes, none larger than the data {spatial}")
    crop = RandCropByPosNegLabel(spatial_size=patch, pos=config.pos_neg[0], neg=config.pos_neg[1], num_samples=1)
    crop.set_random_state(seed=int(rng.integers(2**31)))
    return crop


def _batch(images: np.ndarray, targets: np.ndarray, idx: np.ndarray, task: str, augment: Augment | None,
           crop: RandCropByPosNegLabel | None, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (augmented, cropped) samples into tensors."""
    xs, ys = [], []
    for i in idx:
        x = images[i].astype(np.float32, copy=True)
        y: Any = targets[i].copy() if task == "segmentation" else int(targets[i])
        if augment is not None:
            x, y = augment(x, y, rng)
            x = np.asarray(x, dtype=np.float32)
            if x.shape != images.shape[1:] or (task == "segmentation" and np.shape(y) != targets.shape[1:]):
                raise ConfigError(f"augment changed a sample's shape to {x.shape}; it must keep {images.shape[1:]}")
        if crop is not None:
            label = torch.as_tensor(np.asarray(y))[None]
            both = torch.cat([torch.from_numpy(x), label.float()])
            out = crop(both, label=label)[0]
            out = out.as_tensor() if hasattr(out, "as_tensor") else out
            x, y = out[:-1].numpy(), out[-1].round().long().numpy()
        xs.append(torch.as_tensor(np.ascontiguousarray(x)))
        ys.append(torch.as_tensor(np.asarray(y)).long())
    y_t = torch.stack(ys)
    return torch.stack(xs), (y_t.unsqueeze(1) if task == "segmentation" else y_t)


def _logits(model: nn.Module, x: torch.Tensor, roi: Sequence[int] | None, config: TrainConfig) -> torch.Tensor:
    if roi is None:
        return model(x)
    out = sliding_window_inference(
        x, tuple(roi), sw_batch_size=config.batch_size, predictor=model, overlap=config.sw_overlap, mode="gaussian"
    )
    return cast(torch.Tensor, out)


def _iter_logits(
    model: nn.Module, images: np.ndarray, task: str, config: TrainConfig, roi: Sequence[int] | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (batch slice, float32 CPU logits) in eval mode without gradients."""
    device = next(model.parameters()).device
    if roi is not None and task != "segmentation":
        raise ConfigError("sliding-window inference (roi_size / patch_size) is for segmentation only")
    for start in range(0, images.shape[0], config.batch_size):
        sl = slice(start, start + config.batch_size)
        x = torch.from_numpy(np.ascontiguousarray(images[sl], dtype=np.float32)).to(device)
        with torch.autocast(device.type, enabled=config.amp):
            out = _logits(model, x, roi, config)
        yield sl, out.float().cpu()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def train_victim(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str,
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
    """
    _check_data(images, targets, task, num_classes)
    if config.patch_size is not None and task != "segmentation":
        raise ConfigError("patch_size is for segmentation; set it to None for classification")
    if not np.isfinite(images).all() or images.min() < -1e-4 or images.max() > 1 + 1e-4:
        raise ConfigError("images must be finite and lie in [0, 1]; normalise them first")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n = images.shape[0]
    order = torch.randperm(n, generator=gen).numpy()
    n_val = max(1, round(n * config.val_fraction)) if config.val_fraction > 0 else 0
    if n - n_val < 1:
        raise ConfigError(f"val_fraction {config.val_fraction} leaves no training samples out of {n}")
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    crop = _patch_crop(config, images.shape[2:], rng) if config.patch_size is not None else None
    loss_fn = task_loss(task)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay) if config.optimizer == "adam"
           else torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    stale = 0
    with _threads(config.num_threads):
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
            total, seen = 0.0, 0
            for start in range(0, len(perm), config.batch_size):
                idx = perm[start : start + config.batch_size]
                if len(idx) == 1 and len(perm) > 1 and config.batch_size > 1:
                    continue
                x, y = _batch(images, targets, idx, task, augment, crop, rng)
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=config.amp):
                    out = model(x)
                if out.shape[1] != num_classes:
                    raise ConfigError(f"the model outputs {out.shape[1]} channels but num_classes is {num_classes}")
                loss = loss_fn(out.float(), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            row: dict[str, float] = {"epoch": float(epoch), "loss": total / max(seen, 1)}
            if n_val:
                row["val_loss"] = _val_loss(model, images[val_idx], targets[val_idx], task, config, loss_fn)
                if best is None or row["val_loss"] < best[0]:
                    best, stale = (row["val_loss"], copy.deepcopy(model.state_dict())), 0
                else:
                    stale += 1
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if progress:
                print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), file=sys.stderr)
            if config.patience is not None and stale >= config.patience:
                break
    if config.patience is not None and best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


def _val_loss(
    model: nn.Module, images: np.ndarray, targets: np.ndarray, task: str, config: TrainConfig, loss_fn: nn.Module
) -> float:
    total = 0.0  # mean validation loss, whole images or sliding windows of patch_size
    with _eval_mode(model):
        for sl, out in _iter_logits(model, images, task, config, config.patch_size):
            y = torch.from_numpy(np.asarray(targets[sl], dtype=np.int64))
            y = y.unsqueeze(1) if task == "segmentation" else y
            total += float(loss_fn(out, y)) * out.shape[0]
    return total / images.shape[0]


def predict(
    model: nn.Module,
    images: np.ndarray,
    *,
    task: str,
    config: TrainConfig,
    roi_size: Sequence[int] | None = None,
    logits: bool = False,
) -> np.ndarray:
    """Run ``model`` on images in eval mode, batch by batch.

    Args:
        model: A trained victim.
        images: ``(N, C, *spatial)`` float32 in [0, 1].
        task: ``"segmentation"`` or ``"classification"``.
        config: Batch size, sliding-window overlap, amp and threads (the model stays on
            its device; inputs are moved there).
        roi_size: Sliding-window size (segmentation); None = ``config.patch_size``, and when
            that is None too the whole image goes through the network at once.
        logits: Return the raw logits ``(N, num_classes, ...)`` instead of labels.

    Returns:
        Label maps ``(N, *spatial)`` int64, class indices ``(N,)`` int64, or float32 logits.
    """
    _check_data(images, None, task, None)
    roi = tuple(roi_size) if roi_size is not None else config.patch_size
    outs = []
    with _threads(config.num_threads), _eval_mode(model):
        for _, out in _iter_logits(model, images, task, config, roi):
            outs.append(out if logits else out.argmax(dim=1))
    return torch.cat(outs).numpy()


def evaluate_victim(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str,
    num_classes: int,
    config: TrainConfig,
    roi_size: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, float]:
    """Test metrics of ``model`` on (clean) images; see :mod:`ulmed.eval.metrics`.

    Args:
        model: A trained victim.
        images: ``(N, C, *spatial)`` float32 in [0, 1].
        targets: Label maps ``(N, *spatial)`` or class indices ``(N,)``.
        task: ``"segmentation"`` or ``"classification"``.
        num_classes: Classes including background.
        config: Batch size, overlap, amp and threads.
        roi_size: Sliding-window size; None = ``config.patch_size`` (None = whole inputs).
        spacing: Pixel/voxel size for HD95 (segmentation).

    Returns:
        Segmentation: ``dice``, ``iou``, ``hd95`` and per-class values; classification:
        ``accuracy`` and ``auc``; both with ``n``.
    """
    _check_data(images, targets, task, num_classes)
    metric: SegmentationMetrics | ClassificationMetrics = (
        SegmentationMetrics(num_classes, spacing=spacing) if task == "segmentation"
        else ClassificationMetrics(num_classes)
    )
    roi = tuple(roi_size) if roi_size is not None else config.patch_size
    with _threads(config.num_threads), _eval_mode(model):
        for sl, out in _iter_logits(model, images, task, config, roi):
            metric(out, targets[sl])
    return metric.aggregate()


def victim_sal(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str,
    config: TrainConfig,
    n_batches: int = 4,
    batch_size: int = 8,
    gamma: float = GAMMA,
    steps: int = 1,
) -> list[dict[str, Any]]:
    """Sharpness-aware learnability per layer (:func:`ulmed.eval.learnability.sal_per_layer`).

    The loss is the task's training loss (:func:`task_loss`) on the first ``n_batches``
    batches of ``batch_size`` items, through sliding windows of ``config.patch_size`` when
    it is set (as :func:`predict` runs the model); no AMP.

    Args:
        model: A trained victim.
        images: ``(N, C, *spatial)`` float32 in [0, 1], e.g. the clean test split.
        targets: Label maps ``(N, *spatial)`` or class indices ``(N,)``.
        task: ``"segmentation"`` or ``"classification"``.
        config: Patch size, overlap and threads.
        n_batches: At most this many batches.
        batch_size: Items per batch.
        gamma: Relative radius of the weight perturbation.
        steps: Gradient-ascent steps per layer.

    Returns:
        One ``{"layer", "sal", "loss"}`` per weight layer.
    """
    _check_data(images, targets, task, None)
    n = min(images.shape[0], n_batches * batch_size)
    batches = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        y = torch.from_numpy(np.asarray(targets[sl], dtype=np.int64))
        batches.append((torch.from_numpy(np.ascontiguousarray(images[sl], dtype=np.float32)),
                        y.unsqueeze(1) if task == "segmentation" else y))
    roi = config.patch_size

    def forward(x: torch.Tensor) -> torch.Tensor:
        return _logits(model, x, roi, config)

    with _threads(config.num_threads):
        return sal_per_layer(model, task_loss(task), batches, gamma=gamma, steps=steps, forward=forward)
