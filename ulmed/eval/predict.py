"""Running a trained victim: prediction, test metrics, validation loss and per-layer learnability.

Every pass is in eval mode without gradients, batch by batch (``TrainConfig.batch_size``),
under autocast when ``TrainConfig.amp`` is set. Segmentation with a ``roi_size`` (default
``TrainConfig.patch_size``) runs ``monai.inferers.sliding_window_inference`` over windows of
that size (Gaussian blending, ``TrainConfig.sw_overlap``); otherwise the whole image or
volume goes through the network at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ulmed.core.device import threads
from ulmed.core.tasks import Task, task_loss
from ulmed.core.training import Precision
from ulmed.errors import ConfigError
from ulmed.eval.learnability import GAMMA, sal_per_layer
from ulmed.eval.metrics import ClassificationMetrics, SegmentationMetrics
from ulmed.eval.train_config import TrainConfig, as_target_batch, check_data


def forward_logits(model: nn.Module, x: torch.Tensor, roi: Sequence[int] | None, config: TrainConfig) -> torch.Tensor:
    """``model(x)``, or its sliding-window inference over windows of ``roi``."""
    if roi is None:
        return model(x)
    out = sliding_window_inference(
        x, tuple(roi), sw_batch_size=config.batch_size, predictor=model, overlap=config.sw_overlap, mode="gaussian"
    )
    return cast(torch.Tensor, out)


def iter_logits(
    model: nn.Module, images: np.ndarray, task: Task, config: TrainConfig, roi: Sequence[int] | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (batch slice, float32 CPU logits); call it inside :func:`eval_mode`.

    Raises:
        ConfigError: A sliding window for classification.
    """
    device = next(model.parameters()).device
    if roi is not None and task is not Task.SEGMENTATION:
        raise ConfigError("sliding-window inference (roi_size / patch_size) is for segmentation only")
    precision = Precision(device.type, config.amp)
    for start in range(0, images.shape[0], config.batch_size):
        sl = slice(start, start + config.batch_size)
        x = torch.from_numpy(np.ascontiguousarray(images[sl], dtype=np.float32)).to(device)
        with precision.autocast():
            out = forward_logits(model, x, roi, config)
        yield sl, out.float().cpu()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients inside the block; its mode restored after."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def mean_loss(model: nn.Module, images: np.ndarray, targets: np.ndarray, task: Task, config: TrainConfig,
              loss_fn: nn.Module) -> float:
    """Mean loss over the items (whole images or sliding windows of ``config.patch_size``), e.g. a validation loss."""
    total = 0.0
    with eval_mode(model):
        for sl, out in iter_logits(model, images, task, config, config.patch_size):
            y = as_target_batch(torch.from_numpy(np.asarray(targets[sl], dtype=np.int64)), task)
            total += float(loss_fn(out, y)) * out.shape[0]
    return total / images.shape[0]


def predict(
    model: nn.Module,
    images: np.ndarray,
    *,
    task: str | Task,
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
    task = check_data(images, None, task, None)
    roi = tuple(roi_size) if roi_size is not None else config.patch_size
    outs = []
    with threads(config.num_threads), eval_mode(model):
        for _, out in iter_logits(model, images, task, config, roi):
            outs.append(out if logits else out.argmax(dim=1))
    return torch.cat(outs).numpy()


def evaluate_victim(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str | Task,
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
    task = check_data(images, targets, task, num_classes)
    metric: SegmentationMetrics | ClassificationMetrics = (
        SegmentationMetrics(num_classes, spacing=spacing) if task is Task.SEGMENTATION
        else ClassificationMetrics(num_classes)
    )
    roi = tuple(roi_size) if roi_size is not None else config.patch_size
    with threads(config.num_threads), eval_mode(model):
        for sl, out in iter_logits(model, images, task, config, roi):
            metric(out, targets[sl])
    return metric.aggregate()


def victim_sal(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str | Task,
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
    task = check_data(images, targets, task, None)
    n = min(images.shape[0], n_batches * batch_size)
    batches = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        y = as_target_batch(torch.from_numpy(np.asarray(targets[sl], dtype=np.int64)), task)
        batches.append((torch.from_numpy(np.ascontiguousarray(images[sl], dtype=np.float32)), y))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return forward_logits(model, x, config.patch_size, config)

    with threads(config.num_threads):
        return sal_per_layer(model, task_loss(task), batches, gamma=gamma, steps=steps, forward=forward)
