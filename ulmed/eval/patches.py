"""Training batches of a victim: per-sample augmentation, then an optional random patch.

Patch training (``TrainConfig.patch_size``, segmentation only): each sample in a batch is a
random patch drawn with ``monai.transforms.RandCropByPosNegLabel`` (centre on foreground
or background with the odds ``TrainConfig.pos_neg``), seeded from the run's numpy
generator, so a run is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.transforms import RandCropByPosNegLabel

from ulmed.core.tasks import Task
from ulmed.errors import ConfigError
from ulmed.eval.train_config import TrainConfig, as_target_batch

#: ``augment(image (C, *spatial), target (*spatial) array or int, rng) -> (image, target)``
Augment = Callable[[np.ndarray, Any, np.random.Generator], tuple[np.ndarray, Any]]


def patch_crop(config: TrainConfig, spatial: tuple[int, ...], rng: np.random.Generator) -> RandCropByPosNegLabel:
    """The random patch sampler of ``config.patch_size``, seeded with one draw from ``rng``.

    Raises:
        ConfigError: The patch does not fit the data's spatial shape.
    """
    patch = tuple(config.patch_size or ())
    if len(patch) != len(spatial) or any(p > s for p, s in zip(patch, spatial)):
        raise ConfigError(f"patch_size {patch} must have {len(spatial)} axes, none larger than the data {spatial}")
    crop = RandCropByPosNegLabel(spatial_size=patch, pos=config.pos_neg[0], neg=config.pos_neg[1], num_samples=1)
    crop.set_random_state(seed=int(rng.integers(2**31)))
    return crop


def _augmented(x: np.ndarray, y: Any, augment: Augment, rng: np.random.Generator, image_shape: tuple[int, ...],
               target_shape: tuple[int, ...] | None) -> tuple[np.ndarray, Any]:
    """One sample through ``augment``, which must keep its shape."""
    x, y = augment(x, y, rng)
    x = np.asarray(x, dtype=np.float32)
    if x.shape != image_shape or (target_shape is not None and np.shape(y) != target_shape):
        raise ConfigError(f"augment changed a sample's shape to {x.shape}; it must keep {image_shape}")
    return x, y


def _cropped(x: np.ndarray, y: Any, crop: RandCropByPosNegLabel) -> tuple[np.ndarray, np.ndarray]:
    """One random patch of an image and its label map (cropped together)."""
    label = torch.as_tensor(np.asarray(y))[None]
    both = torch.cat([torch.from_numpy(x), label.float()])
    out = crop(both, label=label)[0]
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return out[:-1].numpy(), out[-1].round().long().numpy()


def training_batch(images: np.ndarray, targets: np.ndarray, idx: np.ndarray, task: Task, augment: Augment | None,
                   crop: RandCropByPosNegLabel | None, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``idx``, each augmented then cropped, stacked into ``(x, y)`` tensors.

    Args:
        images: ``(N, C, *spatial)`` float in [0, 1].
        targets: Label maps ``(N, *spatial)`` or class indices ``(N,)``.
        idx: The samples of the batch, in order.
        task: What the targets are.
        augment: Per-sample augmentation (None: none).
        crop: Patch sampler from :func:`patch_crop` (None: whole samples).
        rng: The run's numpy generator, passed to ``augment``.

    Returns:
        Images ``(B, C, *patch)`` and targets ``(B, 1, *patch)`` or ``(B,)`` int64.
    """
    seg = task is Task.SEGMENTATION
    xs, ys = [], []
    for i in idx:
        x = images[i].astype(np.float32, copy=True)
        y: Any = targets[i].copy() if seg else int(targets[i])
        if augment is not None:
            x, y = _augmented(x, y, augment, rng, images.shape[1:], targets.shape[1:] if seg else None)
        if crop is not None:
            x, y = _cropped(x, y, crop)
        xs.append(torch.as_tensor(np.ascontiguousarray(x)))
        ys.append(torch.as_tensor(np.asarray(y)).long())
    return torch.stack(xs), as_target_batch(torch.stack(ys), task)
