"""Targets for the surrogate: class labels, masks/label maps, or label-free pseudo-targets.

Masks arrive as stored (an HC18 mask is 0/255, an MSD label map 0/1/2). The values present
in the whole data set are mapped, in sorted order, to class indices 0..K-1, so 0/255 becomes
0/1 and a label map keeps its order.

Label-free objective (the common DICOM export has no annotation): each image gets a
pseudo label map from multi-Otsu thresholding of its intensities into ``classes`` bands
(background, soft tissue, bright structures, ...). Error-minimising noise against a
surrogate that segments these bands makes the bands' intensity structure easy to fit
from the noise alone, which is the same shortcut the supervised objective plants; what it
cannot do is target the anatomy a real annotation would later mark. The benchmarks report
the gap against the labelled objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_multiotsu

from ulmed.core.tasks import Task
from ulmed.errors import ConfigError

MAX_CLASSES = 32


@dataclass(frozen=True)
class TargetSet:
    """Surrogate targets for a group of records.

    Args:
        task: ``"segmentation"`` or ``"classification"``.
        targets: Class indices: ``(N,)`` labels or a list of ``(*spatial)`` maps.
        num_classes: Number of classes K.
        values: The original target value of each class index (segmentation), or the labels.
        pseudo: Which records got label-free pseudo-targets.
    """

    task: Task
    targets: list[np.ndarray] | np.ndarray
    num_classes: int
    values: tuple[int, ...]
    pseudo: tuple[bool, ...]


def pseudo_label_map(unit_image: np.ndarray, classes: int = 3) -> np.ndarray:
    """Label-free target: multi-Otsu bands of the channel-mean intensity (0..classes-1)."""
    grey = np.asarray(unit_image, dtype=np.float64).mean(axis=0)
    if np.ptp(grey) == 0:
        return np.zeros(grey.shape, dtype=np.int64)
    try:
        thresholds = threshold_multiotsu(grey, classes=classes)
    except ValueError:  # too few distinct values for that many classes
        thresholds = np.array([grey.mean()])
    return np.digitize(grey, thresholds).astype(np.int64)


def prepare_targets(
    targets: Sequence[np.ndarray | int | None], unit_images: Sequence[np.ndarray], pseudo_classes: int = 3
) -> TargetSet:
    """Turn record targets into surrogate class indices.

    All int targets: classification. Otherwise segmentation: masks are mapped to indices by
    the sorted union of their values; records without a target get pseudo label maps (and
    if no record has a mask at all, the whole group is label-free).

    Raises:
        ConfigError: Mixed class labels and masks, or too many distinct mask values.
    """
    if len(targets) != len(unit_images):
        raise ConfigError(f"{len(targets)} targets for {len(unit_images)} images")
    kinds = {type(t).__name__ if not isinstance(t, np.ndarray) else "array" for t in targets}
    if all(isinstance(t, (int, np.integer)) for t in targets) and targets:
        labels = np.asarray(targets, dtype=np.int64)
        values = tuple(int(v) for v in np.unique(labels))
        index = {v: i for i, v in enumerate(values)}
        index_of = np.array([index[int(v)] for v in labels])
        return TargetSet(Task.CLASSIFICATION, index_of, max(len(values), 2), values, (False,) * len(targets))
    if any(isinstance(t, (int, np.integer)) for t in targets):
        raise ConfigError(f"a group mixes class labels with masks or missing targets ({sorted(kinds)}); "
                          "protect them separately")
    masks = [t for t in targets if isinstance(t, np.ndarray)]
    if not masks:
        maps = [pseudo_label_map(u, pseudo_classes) for u in unit_images]
        return TargetSet(Task.SEGMENTATION, maps, pseudo_classes, tuple(range(pseudo_classes)), (True,) * len(targets))
    values = tuple(int(v) for v in np.unique(np.concatenate([np.unique(m) for m in masks])))
    if len(values) > MAX_CLASSES:
        raise ConfigError(f"masks hold {len(values)} distinct values (> {MAX_CLASSES}); "
                          "they do not look like label maps")
    lut = {v: i for i, v in enumerate(values)}
    out: list[np.ndarray] = []
    pseudo: list[bool] = []
    for t, u in zip(targets, unit_images, strict=True):
        if isinstance(t, np.ndarray):
            mapped = np.zeros(t.shape, dtype=np.int64)
            for v, i in lut.items():
                mapped[t == v] = i
            out.append(mapped)
            pseudo.append(False)
        else:  # no mask for this record: pseudo-target, clipped to the class count
            out.append(np.minimum(pseudo_label_map(u, max(len(values), 2)), max(len(values), 2) - 1))
            pseudo.append(True)
    return TargetSet(Task.SEGMENTATION, out, max(len(values), 2), values, tuple(pseudo))
