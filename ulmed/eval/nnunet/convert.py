"""One case into nnU-Net's raw format: images nnU-Net's readers take, label maps 0..K as uint8.

2D (nnU-Net's ``NaturalImage2DIO``, ``.png``): images become 8- or 16-bit grey or 8-bit RGB PNG.
Palette and bilevel images are expanded to grey (or RGB when the palette has colour); an alpha
channel is dropped; 8/16-bit values are kept; any other type (float or 32-bit TIFF, signed
integers) is mapped linearly from its min/max onto 0..65535, which nnU-Net's per-image z-score
normalisation does not see. Masks are read with :func:`ulmed.io.images.read_mask` (grey,
palette index, 16-bit or bilevel) and their values mapped to 0..K.

3D (``.nii.gz``): the image file is copied byte for byte (a ``.nii`` is gzipped), so the
stored values, affine, spacing and header are nnU-Net's input unchanged. The label map is
read with :func:`ulmed.io.nifti.read_label_map`, mapped to 0..K and written as uint8 with its
own affine and header; its geometry must match the image's.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from ulmed.errors import InputError
from ulmed.io.atomic import atomic_path
from ulmed.io.images import read_mask
from ulmed.io.nifti import read_label_map

#: 2D image files the writer reads.
IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: Label values (background included) that fit nnU-Net's uint8 label files.
MAX_LABELS = 256
_TIFF = (".tif", ".tiff")
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _check_file(path: Path, what: str, suffixes: tuple[str, ...]) -> None:
    if not path.is_file():
        raise InputError(f"{what} file not found; check the path", path)
    if not path.name.lower().endswith(suffixes):
        raise InputError(f"not a {what} file nnU-Net can take here (expected {', '.join(suffixes)})", path)


def _pillow_pixels(path: Path) -> np.ndarray:
    """Pixels of a PNG/JPEG/BMP as (H, W) or (H, W, 3), palette/bilevel/alpha resolved."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGB")
            elif im.mode in ("1", "LA", "CMYK", "YCbCr"):
                im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
            elif im.mode == "RGBA":
                im = im.convert("RGB")
            return np.asarray(im)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read this image ({exc}); the file is truncated or not an image", path) from exc


def _tiff_pixels(path: Path) -> np.ndarray:
    try:
        data = tifffile.imread(path)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read this TIFF image ({exc}); the file is truncated or corrupt", path) from exc
    if data.ndim == 3 and data.shape[-1] == 4:
        data = data[..., :3]  # RGBA: alpha dropped
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] == 3)):
        raise InputError(f"TIFF of shape {data.shape} is not one 2D grey or RGB image; split it into 2D images", path)
    return data


def _to_nnunet_dtype(data: np.ndarray, path: Path) -> np.ndarray:
    """8/16-bit unsigned as they are; anything else mapped from its min/max onto 0..65535."""
    if data.dtype in (np.uint8, np.uint16):
        return data
    if np.issubdtype(data.dtype, np.integer) and data.size and data.min() >= 0 and data.max() <= 65535:
        return data.astype(np.uint16)
    values = data.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError("image has NaN or infinite values; nnU-Net cannot normalise it", path)
    lo, hi = float(values.min()), float(values.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint((values - lo) * scale).astype(np.uint16)


def read_image_2d(path: Path) -> np.ndarray:
    """A 2D image as nnU-Net's PNG reader will see it: (H, W) grey or (H, W, 3) RGB, uint8/uint16.

    Colour images whose channels are equal become grey.

    Raises:
        InputError: Missing, unreadable or not a 2D grey/RGB image.
    """
    path = Path(path)
    _check_file(path, "2D image", IMAGE_2D_SUFFIXES)
    data = _tiff_pixels(path) if path.name.lower().endswith(_TIFF) else _pillow_pixels(path)
    if data.ndim == 3 and all(np.array_equal(data[..., 0], data[..., c]) for c in (1, 2)):
        data = data[..., 0]
    data = _to_nnunet_dtype(data, path)
    if data.ndim == 3 and data.dtype != np.uint8:
        top = float(data.max()) or 1.0  # 16-bit colour PNG cannot be written by Pillow: 8 bits per channel
        data = np.rint(data.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    return np.ascontiguousarray(data)


def read_labels(label_path: Path, image_path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The integer label map of one case, with its values as stored.

    Args:
        label_path: 2D mask (PNG/TIFF/JPEG) or NIfTI label map (``.nii``/``.nii.gz``).
        image_path: The case's image (named when shapes differ).
        shape: The image's spatial shape, ``(H, W)`` or ``(X, Y, Z)``.

    Raises:
        InputError: Unreadable, not integer, or not the image's shape.
    """
    label_path, image_path = Path(label_path), Path(image_path)
    if len(shape) == 2:
        return read_mask(label_path, shape, image_path=image_path)
    return read_label_map(label_path, shape, image_path=image_path)


def volume_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a single-channel 3D NIfTI volume.

    Raises:
        InputError: Missing, unreadable, or not a 3D volume.
    """
    path = Path(path)
    _check_file(path, "NIfTI volume", (".nii", ".nii.gz"))
    try:
        img = nib.load(path)
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"cannot read this NIfTI volume ({exc}); the file is corrupt or truncated", path) from exc
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"NIfTI data of shape {img.shape} is not one 3D volume; give one file per channel", path)
    return (shape[0], shape[1], shape[2]), np.asarray(img.affine, dtype=np.float64)


def map_labels(labels: np.ndarray, lut: dict[int, int], path: Path) -> np.ndarray:
    """``labels`` through ``lut`` (stored value -> nnU-Net label) as uint8."""
    values = np.unique(labels)
    unknown = [int(v) for v in values if int(v) not in lut]
    if unknown:
        raise InputError(f"label values {unknown[:5]} were not in the label set read before; the file changed", path)
    table = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    for value, label in lut.items():
        if value < table.size:
            table[value] = label
    return table[labels.astype(np.int64)]


def write_png(data: np.ndarray, dst: Path) -> None:
    """Write (H, W) uint8/uint16 or (H, W, 3) uint8 as PNG, atomically."""
    with atomic_path(dst) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")


def copy_volume(src: Path, dst: Path) -> None:
    """Copy a NIfTI volume to ``dst`` (``.nii.gz``) unchanged: bytes as they are, a ``.nii`` gzipped."""
    with atomic_path(dst) as tmp:
        if src.name.lower().endswith(".gz"):
            shutil.copyfile(src, tmp)
        else:
            tmp.write_bytes(gzip.compress(src.read_bytes(), mtime=0))


def write_label_volume(labels: np.ndarray, label_path: Path, image_path: Path, dst: Path) -> None:
    """Write a mapped label map as uint8 NIfTI with the label file's affine and header.

    Raises:
        InputError: The label map's affine differs from its image's (nnU-Net would refuse the pair).
    """
    source = nib.load(label_path)
    _, image_affine = volume_geometry(image_path)
    if not np.allclose(source.affine, image_affine, atol=1e-3):
        raise InputError(f"label map geometry (affine) differs from its image {image_path}; "
                         "resample the label map onto the image", label_path)
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    out = type(source)(labels.astype(np.uint8), source.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(dst) as tmp:
        nib.save(out, tmp)
