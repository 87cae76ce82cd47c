"""Images of any size to and from the generator's square input, and training pairs from folders.

:func:`letterbox` scales a ``(B, C, H, W)`` batch so its longer side fits ``size`` (aspect
kept; with ``upscale=False`` a smaller image keeps its pixel grid) and pads it with zeros to a
square; :func:`unletterbox` crops and scales a map back.
:func:`load_pairs` reads an ``images/`` + ``masks/`` data set (grey or RGB, matched by
relative path; an ``index.csv`` with a ``split`` column beside or above the images selects a
split) into letterboxed tensors for training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ulmed.errors import InputError
from ulmed.io.images import read_image
from ulmed.io.kinds import is_image_path


@dataclass(frozen=True)
class Box:
    """Where an image of ``height`` x ``width`` lies inside the letterboxed square."""

    height: int
    width: int
    top: int
    left: int
    inner_h: int
    inner_w: int


def letter_box(height: int, width: int, size: int, upscale: bool = True) -> Box:
    """The placement of a ``height`` x ``width`` image in a ``size`` square (aspect kept, centred).

    With ``upscale=False`` an image that already fits is only padded, never enlarged.
    """
    scale = size / max(height, width)
    if not upscale:
        scale = min(scale, 1.0)
    ih, iw = max(1, round(height * scale)), max(1, round(width * scale))
    return Box(height, width, (size - ih) // 2, (size - iw) // 2, ih, iw)


def letterbox(x: torch.Tensor, size: int, nearest: bool = False, upscale: bool = True) -> tuple[torch.Tensor, Box]:
    """Scale ``(B, C, H, W)`` into a ``size`` square (zero padding); bilinear, or nearest for masks.

    ``upscale=False``: images smaller than ``size`` are padded at their own resolution.
    """
    box = letter_box(x.shape[-2], x.shape[-1], size, upscale)
    mode = {"mode": "nearest"} if nearest else {"mode": "bilinear", "align_corners": False, "antialias": True}
    inner = F.interpolate(x.float(), size=(box.inner_h, box.inner_w), **mode)
    out = x.new_zeros((*x.shape[:-2], size, size), dtype=torch.float32)
    out[..., box.top : box.top + box.inner_h, box.left : box.left + box.inner_w] = inner
    return out, box


def unletterbox(x: torch.Tensor, box: Box) -> torch.Tensor:
    """Inverse of :func:`letterbox` for a map: crop the image's part and scale it back (bilinear)."""
    inner = x[..., box.top : box.top + box.inner_h, box.left : box.left + box.inner_w]
    return F.interpolate(inner, size=(box.height, box.width), mode="bilinear", align_corners=False)


def to_rgb(unit: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(3, H, W)``: grey replicated, RGB kept, other counts averaged to grey."""
    if unit.shape[0] == 3:
        return unit
    grey = unit.mean(0, keepdims=True) if unit.shape[0] != 1 else unit
    return np.repeat(grey, 3, axis=0)


def _split_names(images_dir: Path, split: str) -> set[str] | None:
    """File names in ``split`` from an ``index.csv`` (columns ``image`` and ``split``) near the images."""
    for folder in (images_dir, images_dir.parent):
        index = folder / "index.csv"
        if index.is_file():
            with index.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and {"image", "split"} <= set(rows[0]):
                return {Path(r["image"]).name for r in rows if r["split"] == split}
    return None


def load_pairs(images_dir: str | Path, masks_dir: str | Path, size: int, split: str | None = None,
               limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read images with their masks, letterboxed to ``size``.

    Args:
        images_dir: Folder of PNG/TIFF/JPEG images (searched recursively).
        masks_dir: Masks at the same relative paths (or the same stem with ``.png``).
        size: Square side of the output.
        split: Keep only this split of an ``index.csv`` (ignored when there is none).
        limit: Keep the first ``limit`` pairs (sorted by path).

    Returns:
        Images ``(N, 3, size, size)`` in [0, 1], masks ``(N, 1, size, size)`` in {0, 1}, keys.

    Raises:
        InputError: A folder is missing or no image has a mask.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder, what in ((images_dir, "--data"), (masks_dir, "--masks")):
        if not folder.is_dir():
            raise InputError(f"is not a folder; check {what}", folder)
    keep = _split_names(images_dir, split) if split else None
    images, masks, keys = [], [], []
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file() and is_image_path(p)):
        if keep is not None and path.name not in keep:
            continue
        rel = path.relative_to(images_dir)
        mask_path = next((m for m in (masks_dir / rel, (masks_dir / rel).with_suffix(".png")) if m.is_file()), None)
        if mask_path is None:
            continue
        rec = read_image(path, str(rel), mask_path)
        unit = torch.from_numpy(to_rgb(rec.unit_image()))[None]
        target = torch.from_numpy((np.asarray(rec.target) > 0).astype(np.float32))[None, None]
        images.append(letterbox(unit, size)[0].clamp(0, 1))
        masks.append(letterbox(target, size, nearest=True)[0])
        keys.append(str(rel))
        if limit is not None and len(keys) >= limit:
            break
    if not keys:
        raise InputError(f"no image{' of split ' + repr(split) if keep is not None else ''} has a mask in {masks_dir}; "
                         "masks must have the images' relative paths", images_dir)
    return torch.cat(images), torch.cat(masks), keys
