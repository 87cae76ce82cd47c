"""The body of a medical volume: the positions a protection may touch when air need not move.

Air around the patient is the darkest, flattest part of a CT or MR volume, and noise there is
what a reading window shows first. :func:`body_mask` keeps the positions brighter than the
low end of the volume's robust range (:data:`ulmed.io.record.ROBUST_PERCENTILES`) by
:data:`BODY_LEVEL` of that range, grown by :data:`BODY_MARGIN` positions so that the body's
edge is covered. Dark structures inside the body (lungs, sinuses) count as air too.

The growth is ``scipy.ndimage.binary_dilation(inside, iterations=BODY_MARGIN)`` (its default
cross-shaped structure, outside counted as air), done as shifted ORs of the boolean array: the
same mask (the tests compare the two), ~10x faster on a 25 x 512 x 512 series and without the
~0.2 s import of ``scipy.ndimage`` in a protection run.
"""

from __future__ import annotations

import numpy as np

from ulmed.io.percentile import percentiles, robust_sample
from ulmed.io.record import ROBUST_PERCENTILES, Record

#: Share of the robust range above its low end where the body starts.
BODY_LEVEL = 0.05
#: Positions the body is grown by.
BODY_MARGIN = 2


def body_mask(record: Record) -> np.ndarray | None:
    """``(1, *spatial)`` boolean mask of the body of a medical volume; None when every position may move.

    None for records without a robust budget range (PNG/TIFF images: display data with no
    air to leave alone) and for 2D records.
    """
    mapping = record.mapping
    if mapping.budget_range <= 0 or record.spatial_dims != 3:
        return None
    image = np.asarray(record.image)
    low = percentiles(robust_sample(image), ROBUST_PERCENTILES[:1])[0]
    inside = (image > low + BODY_LEVEL * mapping.budget_range).any(axis=0, keepdims=True)
    return grow(inside, BODY_MARGIN)


def grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown ``steps`` times by one position along every axis of size > 1 (a cross-shaped step).

    The result equals ``scipy.ndimage.binary_dilation(mask, iterations=steps)``: positions outside
    the array count as False, and each step ORs the mask with itself shifted by one either way
    along each axis. An axis of size 1 (a channel axis) adds nothing.

    Args:
        mask: Boolean array of any shape.
        steps: How many steps to grow by (0 returns a copy).

    Returns:
        The grown boolean mask, a new array.
    """
    grown = np.array(mask, dtype=bool)
    for _ in range(steps):
        before = grown.copy()
        for axis in range(grown.ndim):
            if grown.shape[axis] < 2:
                continue
            head = [slice(None)] * grown.ndim
            tail = list(head)
            head[axis], tail[axis] = slice(1, None), slice(None, -1)
            grown[tuple(head)] |= before[tuple(tail)]
            grown[tuple(tail)] |= before[tuple(head)]
    return grown
