"""Dice of nnU-Net's test predictions against the test label maps (:mod:`ulmed.eval.metrics`, MONAI).

Both sides are the files of the run: the predictions nnU-Net wrote (``case_XXXX<ending>``, in the
test image's geometry) and the ``labelsTs`` label maps the raw writer mapped to 0..K. Each case is
scored at its own shape; per-class scores are means over the cases in which the class is present
(:class:`~ulmed.eval.metrics.SegmentationMetrics`), ``dice`` is the mean over foreground classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import ConfigError, InputError


def read_label_file(path: Path) -> np.ndarray:
    """A label map written by nnU-Net or the raw writer: ``.png`` via Pillow, ``.nii.gz`` via nibabel."""
    path = Path(path)
    if not path.is_file():
        raise InputError("nnU-Net wrote no prediction for this test case; see worker.log in the run folder", path)
    if path.name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im).astype(np.int64)
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj).astype(np.int64)


def score_predictions(predictions: Sequence[Path], targets: Sequence[Path], num_classes: int) -> dict[str, Any]:
    """Dice (and IoU, HD95 in voxels) per foreground class and their means over the test cases.

    Args:
        predictions: Predicted label maps, one per test case.
        targets: The test label maps (0..K), same order.
        num_classes: Classes including background.

    Returns:
        ``dice`` (mean foreground Dice), ``dice_per_class`` (``{"1": ..., ...}``, None where a
        class is in no test label map), ``iou``, ``hd95``, ``hd95_undefined`` and ``n``.
    """
    from ulmed.eval.metrics import SegmentationMetrics

    if len(predictions) != len(targets) or not targets:
        raise ConfigError(f"{len(predictions)} predictions for {len(targets)} test label maps; need one each, >= 1")
    metric = SegmentationMetrics(num_classes)
    for pred_path, target_path in zip(predictions, targets):
        pred, target = read_label_file(pred_path), read_label_file(target_path)
        if pred.shape != target.shape:
            raise InputError(f"prediction of shape {pred.shape} does not match the label map's {target.shape}",
                             pred_path)
        metric(pred[None], target[None])
    m = metric.aggregate()
    per_class = {str(k): _finite(m[f"dice_{k}"]) for k in range(1, num_classes)}
    return {"dice": _finite(m["dice"]), "dice_per_class": per_class, "iou": _finite(m["iou"]),
            "hd95": _finite(m["hd95"]), "hd95_undefined": _finite(m["hd95_undefined"]), "n": int(m["n"])}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
