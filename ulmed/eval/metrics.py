"""Test metrics for victims, computed by MONAI (nothing here re-implements Dice or AUC).

Two MONAI-style objects accumulate batches and aggregate at the end:

* :class:`SegmentationMetrics`: Dice (``monai.metrics.DiceMetric``), IoU (``MeanIoU``) and
  HD95 (``HausdorffDistanceMetric(percentile=95)``, in pixels/voxels or in the units of
  ``spacing``) per class and averaged over classes, from one-hot tensors.
* :class:`ClassificationMetrics`: accuracy and ROC AUC (``ROCAUCMetric``, macro average
  over the one-vs-rest columns of the softmax probabilities).

:func:`segmentation_metrics` and :func:`classification_metrics` are one-shot wrappers.

Empty classes. Each score is first computed per (sample, class). When a class is absent
from a sample's target, its Dice and IoU are NaN (MONAI ``ignore_empty=True``): a false
positive on such a sample is not counted. HD95 is NaN when either the target or the
prediction of that class is empty. Means skip NaN: ``dice_<k>`` is the mean over samples
in which class ``k`` is present, ``dice`` the mean of the per-class means. Because a victim
that predicts nothing for a present class gets Dice 0 but an undefined HD95,
``hd95_undefined`` reports the share of (sample, present class) pairs whose HD95 is NaN;
read ``hd95`` together with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, ROCAUCMetric
from monai.networks.utils import one_hot

from ulmed.errors import ConfigError

ArrayLike = np.ndarray | torch.Tensor


def _tensor(x: ArrayLike) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


class SegmentationMetrics:
    """Accumulates Dice, IoU and HD95 over batches (call, then :meth:`aggregate`, :meth:`reset`).

    Args:
        num_classes: Number of classes, background (label 0) included; >= 2.
        include_background: Score class 0 too.
        spacing: Pixel/voxel size for HD95 (a float or one per axis); None = index units.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (background included), got {num_classes}")
        self.num_classes = num_classes
        self.include_background = include_background
        self.spacing = spacing
        self._dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)
        self._iou = MeanIoU(include_background=include_background, reduction="none", ignore_empty=True)
        self._hd = HausdorffDistanceMetric(include_background=include_background, percentile=95, reduction="none")
        self._present: list[torch.Tensor] = []

    def __call__(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch.

        Args:
            pred: Logits or probabilities ``(N, C, *spatial)`` (argmax over C is taken), or a
                label map ``(N, *spatial)``.
            target: Label map ``(N, *spatial)`` with values in ``[0, num_classes)``.
        """
        p, t = _tensor(pred), _tensor(target)
        if p.ndim == t.ndim + 1:
            if p.shape[1] != self.num_classes:
                raise ConfigError(f"prediction has {p.shape[1]} channels, expected num_classes={self.num_classes}")
            p = p.argmax(dim=1)
        if p.shape != t.shape:
            raise ConfigError(f"prediction shape {tuple(p.shape)} does not match target shape {tuple(t.shape)}")
        if t.ndim < 3:
            raise ConfigError(f"expected label maps (N, *spatial) with 2 or 3 spatial axes, got {tuple(t.shape)}")
        for name, x in (("prediction", p), ("target", t)):
            if x.is_floating_point():
                x = x.round()
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
                lo, hi = int(x.min()), int(x.max())
                raise ConfigError(f"{name} labels must lie in [0, {self.num_classes}), got {lo}..{hi}")
        p1 = one_hot(p.long().unsqueeze(1), self.num_classes)
        t1 = one_hot(t.long().unsqueeze(1), self.num_classes)
        self._dice(p1, t1)
        self._iou(p1, t1)
        with warnings.catch_warnings():  # MONAI warns on every empty class; documented above
            warnings.simplefilter("ignore")
            self._hd(p1, t1, spacing=self.spacing)
        first = 0 if self.include_background else 1
        self._present.append(t1[:, first:].flatten(2).any(dim=2))

    def aggregate(self) -> dict[str, float]:
        """Per-class and class-mean scores of everything added since the last reset.

        Returns:
            ``dice``, ``iou``, ``hd95`` (means over classes), ``dice_<k>``, ``iou_<k>``,
            ``hd95_<k>`` for each scored class ``k``, ``hd95_undefined`` and ``n`` (samples).
        """
        if not self._present:
            raise ConfigError("no batch was added to the segmentation metrics before aggregate()")
        dice, iou, hd = (torch.as_tensor(m.aggregate()).float() for m in (self._dice, self._iou, self._hd))
        present = torch.cat(self._present)
        first = 0 if self.include_background else 1
        out: dict[str, float] = {}
        for name, values in (("dice", dice), ("iou", iou), ("hd95", hd)):
            per_class = [_nanmean(values[:, j]) for j in range(values.shape[1])]
            for j, v in enumerate(per_class):
                out[f"{name}_{j + first}"] = v
            out[name] = _nanmean(torch.tensor(per_class))
        n_present = int(present.sum())
        out["hd95_undefined"] = float(torch.isnan(hd[present]).sum()) / n_present if n_present else float("nan")
        out["n"] = float(present.shape[0])
        return out

    def reset(self) -> None:
        """Forget every batch added so far."""
        for m in (self._dice, self._iou, self._hd):
            m.reset()
        self._present = []


class ClassificationMetrics:
    """Accumulates accuracy and ROC AUC over batches (call, then :meth:`aggregate`, :meth:`reset`).

    Args:
        num_classes: Number of classes, >= 2.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self._auc = ROCAUCMetric(average="macro")
        self._correct = 0
        self._n = 0

    def __call__(self, logits: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch of logits ``(N, num_classes)`` and integer labels ``(N,)``."""
        z, y = _tensor(logits).float(), _tensor(labels).long().reshape(-1)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise ConfigError(f"logits must be (N, {self.num_classes}), got {tuple(z.shape)}")
        if z.shape[0] != y.shape[0]:
            raise ConfigError(f"{z.shape[0]} logits but {y.shape[0]} labels")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ConfigError(f"labels must lie in [0, {self.num_classes}), got {int(y.min())}..{int(y.max())}")
        self._correct += int((z.argmax(dim=1) == y).sum())
        self._n += int(y.numel())
        self._auc(torch.softmax(z, dim=1), one_hot(y.unsqueeze(1), self.num_classes, dim=1))

    def aggregate(self) -> dict[str, float]:
        """``accuracy``, ``auc`` (NaN, with a MONAI warning, when only one class is present) and ``n``."""
        if self._n == 0:
            raise ConfigError("no batch was added to the classification metrics before aggregate()")
        auc = float(np.asarray(self._auc.aggregate(), dtype=np.float64))
        return {"accuracy": self._correct / self._n, "auc": auc, "n": float(self._n)}

    def reset(self) -> None:
        """Forget every batch added so far."""
        self._auc.reset()
        self._correct = 0
        self._n = 0


def segmentation_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, IoU and HD95 of one set of predictions; see :class:`SegmentationMetrics`.

    Args:
        pred: Logits ``(N, C, *spatial)`` or a label map ``(N, *spatial)``.
        target: Label map ``(N, *spatial)``.
        num_classes: Classes including background.
        include_background: Score class 0 too.
        spacing: Pixel/voxel size for HD95, or None for index units.

    Returns:
        The dictionary of :meth:`SegmentationMetrics.aggregate`.
    """
    metric = SegmentationMetrics(num_classes, include_background=include_background, spacing=spacing)
    metric(pred, target)
    return metric.aggregate()


def classification_metrics(logits: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy and ROC AUC of logits ``(N, C)`` against labels ``(N,)``; see :class:`ClassificationMetrics`."""
    z = _tensor(logits)
    if z.ndim != 2:
        raise ConfigError(f"logits must be (N, C), got {tuple(z.shape)}")
    metric = ClassificationMetrics(int(z.shape[1]))
    metric(z, labels)
    return metric.aggregate()
