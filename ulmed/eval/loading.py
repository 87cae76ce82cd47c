"""Arrays for the victims: each item's image and target read from its files and brought to one size.

:class:`Preprocess` says how (and goes into the report as the ``loader`` settings):

* 2D images, values / 255 (/ 65535 for 16-bit): grey, or RGB kept as 3 channels when every
  image of the set is colour (a set that mixes them is read grey, Pillow's ``convert("L")``).
  With ``keep_aspect`` (default) an image is scaled to fit ``size`` and zero-padded
  symmetrically (a letterbox), else stretched. The resize ``kernel`` is one that trainers
  use (:class:`ResizeKernel`): ``pil`` (default; Pillow ``BILINEAR`` on float, antialiased),
  ``torch`` (``interpolate(bilinear, antialias=True)``), ``cv-area`` / ``cv-linear`` (OpenCV
  ``INTER_AREA`` / ``INTER_LINEAR``, through albumentations' ``Resize`` as an albumentations
  trainer calls it). Resizing is in float: no re-quantisation, so a perturbation survives it as far
  as the kernel lets it. Classification images are resized the same way.
* 2D masks: nearest neighbour (:func:`ulmed.core.grid.nearest_labels`); a {0, 255} mask
  becomes {0, 1}, an integer label map keeps its values.
* 3D NIfTI volumes (axes as stored): optionally resampled first to ``spacing`` (mm per
  axis, from the header's voxel sizes; images linear, label maps nearest, with
  ``scipy.ndimage.zoom``), then normalised to [0, 1] by the volume's own min/max and
  centre-padded with 0 and/or centre-cropped to ``shape``; label maps get the same.

Without ``spacing`` and with the ``pil`` kernel the arithmetic is the one the benchmarks'
results were made with, so they stay byte-identical.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.grid import nearest_labels
from ulmed.errors import ConfigError, InputError
from ulmed.eval.folders import EvalItem
from ulmed.io.images import read_mask
from ulmed.io.nifti import read_label_map

log = logging.getLogger("ulmed")
COLOUR_MODES = ("RGB", "RGBA", "RGBX")
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, KeyError, IndexError,
                Image.DecompressionBombError, nib.filebasedimages.ImageFileError)


class ResizeKernel(StrEnum):
    """Resize kernels of 2D trainers."""

    #: Pillow ``resize(BILINEAR)`` on float (antialiased when shrinking).
    PIL = "pil"
    #: ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``.
    TORCH = "torch"
    #: OpenCV / albumentations ``INTER_AREA`` (box averaging).
    CV_AREA = "cv-area"
    #: OpenCV ``INTER_LINEAR`` (bilinear without antialiasing).
    CV_LINEAR = "cv-linear"


#: The kernel values, in definition order.
KERNELS: tuple[str, ...] = names(ResizeKernel)


#: OpenCV's interpolation flags of the two kernels (INTER_AREA 3, INTER_LINEAR 1), as albumentations'
#: ``Resize`` takes them.
_OPENCV_FLAGS: dict[ResizeKernel, int] = {ResizeKernel.CV_AREA: 3, ResizeKernel.CV_LINEAR: 1}


def _positive(values: Sequence[Any], n: int, what: str, kind: type) -> tuple[Any, ...]:
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be {n} positive numbers, got {values!r}") from None
    if len(out) != n or min(out) <= 0:
        raise ConfigError(f"{what} must be {n} positive numbers, got {tuple(values)}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """How items are brought to the victims' size (validated on construction; see the module docstring).

    Args:
        size: (height, width) of 2D images.
        keep_aspect: Letterbox (True) or stretch (False) 2D images.
        kernel: 2D resize kernel (:class:`ResizeKernel`).
        shape: Volume shape after centre pad/crop (3D).
        spacing: Target voxel size in mm per stored axis, resampled to before pad/crop (3D);
            None keeps the native grid.
    """

    size: Sequence[int] = (64, 64)
    keep_aspect: bool = True
    kernel: str = ResizeKernel.PIL
    shape: Sequence[int] = (40, 56, 40)
    spacing: Sequence[float] | None = None

    def __post_init__(self) -> None:
        kernel = look_up(self.kernel, ResizeKernel, "resize kernel")
        values = {"size": _positive(self.size, 2, "size", int), "shape": _positive(self.shape, 3, "shape", int),
                  "kernel": kernel, "keep_aspect": bool(self.keep_aspect),
                  "spacing": None if self.spacing is None else _positive(self.spacing, 3, "spacing", float)}
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here

    def record(self, spatial_dims: int) -> dict[str, Any]:
        """The settings that apply to data of ``spatial_dims`` (the report's ``loader``)."""
        if spatial_dims == 3:
            return {"shape": self.shape, "spacing": self.spacing}
        return {"size": self.size, "keep_aspect": self.keep_aspect, "kernel": str(self.kernel)}


def image_channels(path: Path) -> int:
    """3 for a colour image, 1 for grey (or an unreadable file: that is reported when it is read)."""
    try:
        with Image.open(path) as im:
            return 3 if im.mode in COLOUR_MODES else 1
    except _READ_ERRORS:
        return 1


def read_image_2d(path: Path, channels: int = 1) -> tuple[np.ndarray, float]:
    """An image as ``(channels, H, W)`` float32 in [0, 1], and its native units per 1 (255 or 65535).

    Raises:
        InputError: The file cannot be read.
    """
    try:
        with Image.open(path) as im:
            if channels == 3 and im.mode in COLOUR_MODES:
                arr = np.asarray(im.convert("RGB"))
            else:
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read image ({exc})", path) from None
    scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
    planes = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else np.repeat(arr[None], channels, axis=0)
    return planes.astype(np.float32) / scale, scale


def _fitted_shape(hw: Sequence[int], prep: Preprocess) -> tuple[int, int]:
    """The (h, w) an (H, W) image is resized to before the letterbox padding."""
    (h, w), (th, tw) = hw, prep.size
    if not prep.keep_aspect:
        return th, tw
    scale = min(th / h, tw / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _pad(resized: np.ndarray, size: Sequence[int]) -> np.ndarray:
    th, tw = size
    nh, nw = resized.shape
    out = np.zeros((th, tw), dtype=resized.dtype)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def resize_plane(plane: np.ndarray, hw: tuple[int, int], kernel: str) -> np.ndarray:
    """One ``(H, W)`` float plane resized to ``hw`` with a :class:`ResizeKernel`."""
    kind = look_up(kernel, ResizeKernel, "resize kernel")
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    if kind is ResizeKernel.PIL:
        return np.asarray(Image.fromarray(plane).resize((hw[1], hw[0]), resample=Image.Resampling.BILINEAR))
    if kind is ResizeKernel.TORCH:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(plane)[None, None]
        return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    import albumentations as A  # the resize of an albumentations trainer (OpenCV's)

    resize = A.Resize(hw[0], hw[1], interpolation=_OPENCV_FLAGS[kind])
    return np.asarray(resize(image=plane)["image"], dtype=np.float32)


def fit_image_2d(image: np.ndarray, prep: Preprocess) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(C, *prep.size)``: resized with the kernel, letterboxed, clipped to [0, 1]."""
    hw = _fitted_shape(image.shape[1:], prep)
    planes = [_pad(resize_plane(plane, hw, prep.kernel), prep.size) for plane in image]
    return np.clip(np.stack(planes), 0.0, 1.0)


def mask_classes(raw: np.ndarray) -> np.ndarray:
    """A mask's class indices: {0, 255} -> {0, 1}; other integer label maps keep their values (int64)."""
    values = np.unique(raw)
    if values.size and values[-1] == 255 and np.isin(values, (0, 255)).all():
        return (raw // 255).astype(np.int64)
    return raw.astype(np.int64)


def fit_labels_2d(labels: np.ndarray, native_hw: Sequence[int], prep: Preprocess) -> np.ndarray:
    """An ``(H, W)`` label map -> ``prep.size`` by nearest neighbour, letterboxed like its image."""
    return _pad(nearest_labels(labels, _fitted_shape(native_hw, prep)), prep.size).astype(np.int64)


def fit_nd(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-pad with zeros and/or centre-crop ``arr`` to ``shape``."""
    out = np.zeros(tuple(shape), dtype=arr.dtype)
    src, dst = [], []
    for s, t in zip(arr.shape, shape):
        a = abs(s - t) // 2
        src.append(slice(a, a + t) if s >= t else slice(0, s))
        dst.append(slice(0, t) if s >= t else slice(a, a + s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI volume as float32 ``(X, Y, Z)`` (trailing axes of size 1 dropped) and its voxel sizes (mm).

    Raises:
        InputError: The file cannot be read or is not one 3D volume.
    """
    try:
        image: Any = nib.load(str(path))
        vol = np.asarray(image.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read NIfTI ({exc})", path) from None
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {vol.shape}; give one volume per file", path)
    return vol, zooms


def resample(vol: np.ndarray, zooms: Sequence[float], spacing: Sequence[float] | None, order: int) -> np.ndarray:
    """``vol`` resampled from voxel sizes ``zooms`` to ``spacing`` (order 1: linear, 0: nearest); as is for None."""
    if spacing is None:
        return vol
    factors = [z / s if z > 0 else 1.0 for z, s in zip(zooms, spacing)]
    if all(abs(f - 1.0) < 1e-6 for f in factors):
        return vol
    from scipy.ndimage import zoom

    return zoom(vol, factors, order=order, mode="nearest", grid_mode=True)


def _volume(path: Path, prep: Preprocess) -> tuple[np.ndarray, tuple[int, ...], tuple[float, ...]]:
    """The fitted ``(1, *shape)`` volume, its native shape and voxel sizes."""
    native, zooms = read_volume(path)
    vol = resample(native, zooms, prep.spacing, order=1)
    lo, hi = float(vol.min()), float(vol.max())
    vol = (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)
    return fit_nd(vol.astype(np.float32), prep.shape)[None], native.shape, zooms


def load_image(path: Path, prep: Preprocess, spatial_dims: int, channels: int = 1) -> np.ndarray:
    """One image or volume, preprocessed: ``(C, *spatial)`` float32 in [0, 1]."""
    if spatial_dims == 3:
        return _volume(path, prep)[0]
    return fit_image_2d(read_image_2d(path, channels)[0], prep)


def load_item(item: EvalItem, prep: Preprocess, spatial_dims: int, channels: int = 1) -> tuple[np.ndarray, Any]:
    """An item's preprocessed image and target (label map, or class index).

    Raises:
        InputError: The image or its target cannot be read, or their sizes differ.
    """
    if spatial_dims == 3:
        image, native_shape, zooms = _volume(item.image, prep)
    else:
        native = read_image_2d(item.image, channels)[0]
        image, native_shape = fit_image_2d(native, prep), native.shape[1:]
    if item.target is None:
        return image, int(item.label if item.label is not None else 0)
    if spatial_dims == 3:
        labels = read_label_map(item.target, tuple(native_shape), item.image).astype(np.int64)
        return image, fit_nd(resample(labels, zooms, prep.spacing, order=0), prep.shape)
    raw = read_mask(item.target, tuple(native_shape), item.image)
    return image, fit_labels_2d(mask_classes(raw), native_shape, prep)


def load_items(items: Sequence[EvalItem], prep: Preprocess, spatial_dims: int, channels: int = 1,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[EvalItem], list[tuple[str, str]]]:
    """Images and targets of ``items`` (the first ``limit`` readable ones); unreadable items are skipped.

    Returns:
        Images ``(N, C, *spatial)`` float32, targets (``(N, *spatial)`` or ``(N,)`` int64),
        the items loaded, and ``(key, reason)`` of those skipped.

    Raises:
        InputError: No item could be read.
    """
    images, targets, kept, skipped = [], [], [], []
    for item in items:
        if limit is not None and len(kept) >= limit:
            break
        try:
            image, target = load_item(item, prep, spatial_dims, channels)
        except InputError as exc:
            skipped.append((item.key, exc.reason))
            continue
        images.append(image)
        targets.append(target)
        kept.append(item)
    if not kept:
        reasons = "; ".join(f"{k}: {r}" for k, r in skipped[:3])
        raise InputError(f"none of {len(items)} item(s) could be read ({reasons})")
    return np.stack(images), np.asarray(np.stack(targets), dtype=np.int64), kept, skipped


def load_images(paths: Sequence[Path], prep: Preprocess, spatial_dims: int, channels: int = 1) -> np.ndarray:
    """Preprocessed images of ``paths`` (a protected copy), every one required: ``(N, C, *spatial)``."""
    return np.stack([load_image(p, prep, spatial_dims, channels) for p in paths])
