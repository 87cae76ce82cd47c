"""An ML-ready copy of a 2D data set: every image and mask on one fixed ``N x N`` grid.

``ulmed release --size N`` ships a data set the way MedMNIST+ or a preprocessed nnU-Net
data set is shipped: resampled to the grid a trainer uses as it is, then protected on that
grid, so that what survives is what survives on the grid (no resize of the trainer's own
averages the code away). :func:`resample_dataset` writes that copy into a staging folder:

* images: Pillow's bicubic resize (antialiased when shrinking), rounded back to the stored
  dtype, each channel alone; letterboxed (aspect kept, zero padding centred) or stretched,
  as :class:`ulmed.core.grid.Fit` says;
* masks and label maps: nearest neighbour, the same geometry, so labels stay labels;
* everything else (``index.csv``, licences) copied byte for byte; a file that cannot be read
  as an image is copied as it is, so that the protection run reports it as that file;
* ``resampled.json``: for every image its native shape, the scale and the padding offset,
  which map a prediction back to the original pixels.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from ulmed.choices import look_up
from ulmed.core.grid import Fit, WorkingGrid, nearest_labels
from ulmed.errors import ConfigError, InputError
from ulmed.io.discover import discover

GEOMETRY_NAME = "resampled.json"


@dataclass
class Resampled:
    """What :func:`resample_dataset` wrote.

    Args:
        root: The staging folder (named like the source, so a release's name and resume key stay).
        size: The grid's side ``N``.
        fit: How images were fitted into ``N x N``.
        images: Images resampled (an image that cannot be read is copied as it is, for the
            protection run to report as that file).
        masks: Masks and label maps resampled.
    """

    root: Path
    size: int
    fit: Fit
    images: int = 0
    masks: int = 0

    def card_lines(self) -> list[str]:
        """What the data card says about the resampling."""
        how = ("letterboxed (aspect ratio kept, zero padding centred)" if self.fit is Fit.LETTERBOX
               else "stretched to the square")
        return [f"- Resampled for training: {self.images} image(s) and {self.masks} mask(s) brought to "
                f"{self.size} x {self.size} pixels, {how}; images with Pillow's antialiased bicubic resize, "
                f"masks and label maps by nearest neighbour. `{GEOMETRY_NAME}` holds each image's native "
                "shape, scale and offset. The protection was made on this grid: train at this size, without "
                "a further resize."]


def _plane(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """One (H, W) plane resized to ``hw``: nearest for labels, bicubic (antialiased) for images."""
    if nearest:
        return nearest_labels(arr, hw)
    out = np.asarray(Image.fromarray(arr.astype(np.float32)).resize(hw[::-1], Image.Resampling.BICUBIC))
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(arr.dtype)


def fit_array(arr: np.ndarray, grid: WorkingGrid, nearest: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """``(H, W)`` or ``(H, W, C)`` resampled onto the grid's one size, and its geometry.

    Returns:
        The ``(N, N[, C])`` array in ``arr``'s dtype and ``{"shape", "scale", "offset"}``.
    """
    size = grid.sizes[0]
    h, w = arr.shape[:2]
    hw = grid.working_shape((h, w), size)
    planes = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[-1])]
    small = [_plane(np.ascontiguousarray(p), hw, nearest) for p in planes]
    top, left = (size - hw[0]) // 2, (size - hw[1]) // 2
    out = np.zeros((size, size, *arr.shape[2:]), dtype=arr.dtype)
    out[top: top + hw[0], left: left + hw[1]] = small[0] if arr.ndim == 2 else np.stack(small, axis=-1)
    return out, {"shape": [h, w], "scale": [hw[0] / h, hw[1] / w], "offset": [top, left]}


def _read(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return np.asarray(tifffile.imread(path))
    with Image.open(path) as im:
        return np.asarray(im)


def _write(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path.with_suffix(".png") if path.suffix.lower() in (".jpg", ".jpeg") else path)


def resample_dataset(source: str | Path, staging: str | Path, size: int, fit: str | Fit = Fit.LETTERBOX) -> Resampled:
    """Write ``source`` resampled to ``size x size`` into ``staging/<source name>``.

    Args:
        source: A 2D data-set folder (``images/`` + ``masks/`` or ``labels/``, split files ...).
        staging: An empty working folder; the copy goes into a subfolder named like ``source``.
        size: The grid's side ``N`` (>= 2).
        fit: ``letterbox`` or ``stretch``.

    Returns:
        What was written (the copy's root is ``result.root``).

    Raises:
        ConfigError: A size below 2, an unknown fit, or an input holding DICOM or NIfTI
            volumes (they are resampled to a spacing, which ``--size`` is not).
        InputError: The source does not exist or holds no image.
    """
    grid = WorkingGrid((int(size),), look_up(fit, Fit, "fit"))
    src = Path(source).expanduser().resolve()
    inv = discover(src)
    if inv.nifti or inv.dicom.series:
        raise ConfigError(f"--size resamples 2D image data sets; {src.name} holds DICOM series or NIfTI volumes "
                          "(a volume is resampled to a spacing, which --size does not do); release it without --size")
    root = Path(staging) / src.name
    result = Resampled(root, grid.sizes[0], grid.fit)
    geometry: dict[str, Any] = {"size": grid.sizes[0], "fit": grid.fit.value, "images": {}}
    for item in inv.images:
        try:
            arr, geo = fit_array(_read(item.path), grid, nearest=False)
        except (OSError, ValueError):
            (root / item.rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.path, root / item.rel)
            continue
        _write(arr, root / item.rel)
        geometry["images"][item.rel.as_posix()] = geo
        result.images += 1
    for target in inv.targets:
        rel = target.relative_to(inv.root)
        try:
            arr, _ = fit_array(_read(target), grid, nearest=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read this mask to resample it ({exc}); fix or remove it", target) from None
        _write(arr, root / rel)
        result.masks += 1
    for other in [*inv.others, *(path for path, _ in inv.bad if path.is_file() and not path.is_symlink())]:
        (root / other.relative_to(inv.root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(other, root / other.relative_to(inv.root))
    root.mkdir(parents=True, exist_ok=True)
    (root / GEOMETRY_NAME).write_text(json.dumps(geometry, indent=1, sort_keys=True) + "\n")
    return result
