"""Records optimised together: grouping, the tensors the min-min loop takes, and the way back.

:func:`group_records` splits records by (spatial dims, channels), one surrogate per group.
:func:`build_group` turns a group's records into the loop's tensors: targets become class
indices (:mod:`ulmed.core.targets`), images are padded to a common shape or cut into tiles
(:mod:`ulmed.core.canvas`), and each row gets its budget (padded positions a zero L-inf
budget). :class:`NoiseStore` maps the optimised noise back to each record (crop, untile or
class row) and serves it by record key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ulmed.core.canvas import TileLayout, crop, pad_stack, tile, untile
from ulmed.core.surrogates import UNET_MULTIPLE
from ulmed.core.targets import TargetSet, prepare_targets
from ulmed.core.tasks import Norm, Task
from ulmed.errors import ConfigError
from ulmed.io.record import Record


def group_records(records: Sequence[Record]) -> list[tuple[tuple[int, int], list[Record]]]:
    """Records by ``(spatial dims, channels)``, groups in sorted order, records in input order."""
    groups: dict[tuple[int, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r.spatial_dims, r.channels), []).append(r)
    return sorted(groups.items())


@dataclass
class Group:
    """Records optimised together, with what is needed to map their noise back.

    ``images``/``targets`` are the tensors given to the loop; ``valid`` marks real (not
    padded) positions; ``eps`` is the per-position L-inf budget map, or for an L2 budget
    one radius per row; ``layouts`` holds each record's tiles (tiled mode) as
    ``(first row, TileLayout)``.
    """

    records: list[Record]
    targets_info: TargetSet
    images: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor
    eps: torch.Tensor
    layouts: list[tuple[int, TileLayout]] | None = None


def tile_shape(tile_size: Sequence[int] | int | None, spatial_dims: int) -> tuple[int, ...] | None:
    """The tile size per spatial axis (None: no tiling).

    Raises:
        ConfigError: Not one size per axis, or a size that is not a multiple of the UNet's strides.
    """
    if tile_size is None:
        return None
    if np.ndim(tile_size) == 0:
        size = (int(tile_size),) * spatial_dims  # type: ignore[arg-type]
    else:
        size = tuple(int(t) for t in tile_size)  # type: ignore[union-attr]
    if len(size) != spatial_dims or any(t % UNET_MULTIPLE for t in size):
        raise ConfigError(f"tile_size {size} needs {spatial_dims} sizes, each a multiple of {UNET_MULTIPLE}")
    return size


def tile_radii(eps: float, valid_tiles: np.ndarray, norm: Norm | str) -> list[float]:
    """Budget of each tile of one record: ``eps`` for L-inf; for L2 ``eps * sqrt(share)``.

    An L2 tile gets the share of the record's real positions it holds, so the squared
    radii add up to ``eps**2`` and the untiled noise stays inside the record's ball.
    """
    if norm != Norm.L2:
        return [eps] * len(valid_tiles)
    counts = valid_tiles.reshape(len(valid_tiles), -1).sum(1).astype(np.float64)
    return [float(eps * np.sqrt(c / counts.sum())) for c in counts]


#: The padded or tiled arrays of a group: images, targets, valid masks.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tiled(
    units: list[np.ndarray], info: TargetSet, eps: list[float], tiles: tuple[int, ...], norm: Norm | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float], list[tuple[int, TileLayout]]]:
    """Images, targets, valid masks, row budgets and layouts of records cut into tiles."""
    parts, targets, valid, row_eps, layouts = [], [], [], [], []
    for u, t, e in zip(units, info.targets, eps, strict=True):
        img_tiles, layout = tile(u, tiles)
        ok_tiles, _ = tile(np.ones((1, *u.shape[1:]), dtype=bool), tiles)
        layouts.append((sum(len(p) for p in parts), layout))
        parts.append(img_tiles)
        targets.append(tile(np.asarray(t)[None], tiles)[0])
        valid.append(ok_tiles)
        row_eps += tile_radii(e, ok_tiles, norm)
    return np.concatenate(parts), np.concatenate(targets), np.concatenate(valid), row_eps, layouts


def _padded(units: list[np.ndarray], info: TargetSet) -> Arrays:
    """Images, targets and valid masks of records padded to a common shape."""
    seg = info.task == Task.SEGMENTATION
    multiple = UNET_MULTIPLE if seg else 1
    images, ok = pad_stack(units, multiple)
    if seg:
        tgt, _ = pad_stack([np.asarray(t)[None].astype(np.float32) for t in info.targets], multiple)
    else:
        tgt = np.asarray(info.targets)
    return images, tgt, ok


def build_group(records: list[Record], eps: list[float], norm: Norm | str, tile_size: Sequence[int] | int | None,
                pseudo_classes: int) -> Group:
    """The loop's tensors for one group of records.

    Args:
        records: Records of one ``(spatial dims, channels)``.
        eps: Each record's budget in [0, 1] units.
        norm: The budget's norm: L-inf budgets become a per-position map (0 on padding),
            L2 budgets one radius per row.
        tile_size: Tile size, one or one per axis (segmentation only; None pads instead).
        pseudo_classes: Bands of the label-free pseudo-targets.
    """
    units = [r.unit_image() for r in records]
    info = prepare_targets([r.target for r in records], units, pseudo_classes)
    size = tile_shape(tile_size, records[0].spatial_dims)
    layouts = None
    if size is not None and info.task == Task.SEGMENTATION:
        images, tgt, ok, row_eps, layouts = _tiled(units, info, eps, size, norm)
    else:
        (images, tgt, ok), row_eps = _padded(units, info), eps
    eps_rows = torch.as_tensor(np.asarray(row_eps, dtype=np.float32))
    valid = torch.as_tensor(ok)
    if norm != Norm.L2:  # L2: one radius per row (clamp_l2); padded positions are frozen instead
        eps_rows = eps_rows.view(-1, *([1] * (images.ndim - 1))) * valid.float()
    return Group(records, info, torch.as_tensor(images), torch.as_tensor(tgt).long(), valid, eps_rows, layouts)


def classwise_eps(group: Group, classes: torch.Tensor) -> torch.Tensor:
    """One budget per class noise: the smallest record budget, so every record's holds."""
    per_record = group.eps.flatten(1).amax(1) if group.eps.dim() > 1 else group.eps
    shape = (int(classes.max()) + 1, *([1] * (group.images.dim() - 1)))
    return torch.full(shape, float(per_record.min()))


class RealPositions:
    """A position policy that only freezes padded positions (their L-inf budget is 0; L2 needs this)."""

    def __init__(self, valid: torch.Tensor) -> None:
        self.valid = valid

    def __call__(self, indices: torch.Tensor, x: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        """The valid mask of the rows ``indices`` (on ``x``'s device), and no selector."""
        mask = self.valid[indices.to(self.valid.device)]
        return (mask if x is None else mask.to(x.device)), None


class NoiseStore:
    """The optimised noise of each record, by record key (cropped, untiled or its class's row)."""

    def __init__(self) -> None:
        self._deltas: dict[str, np.ndarray] = {}

    def clear(self) -> None:
        """Forget every record's noise (a new chunk begins)."""
        self._deltas.clear()

    def store(self, group: Group, delta: np.ndarray, classes: torch.Tensor | None) -> None:
        """Keep the noise of each record of ``group`` from the loop's rows ``delta``."""
        for i, rec in enumerate(group.records):
            if classes is not None:
                d = crop(delta[int(classes[i])], rec.spatial_shape)
            elif group.layouts is not None:
                first, layout = group.layouts[i]
                d = untile(delta[first : first + layout.count], layout)
            else:
                d = crop(delta[i], rec.spatial_shape)
            self._deltas[rec.key] = d.astype(np.float32)

    def __getitem__(self, key: str) -> np.ndarray:
        """The noise of the record ``key``; KeyError when it was not in the last chunk."""
        return self._deltas[key]

    def __contains__(self, key: object) -> bool:
        return key in self._deltas
