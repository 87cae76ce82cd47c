"""NIfTI-1/NIfTI-2 volumes (``.nii``, ``.nii.gz``) to and from :class:`Record`.

Layout: a 3D volume ``(X, Y, Z)`` becomes ``(1, X, Y, Z)``; a 4D series ``(X, Y, Z, T)``
becomes ``(T, X, Y, Z)`` (time points are channels). A 2D NIfTI ``(X, Y)`` is read as a
volume with one slice, ``(1, X, Y, 1)``; trailing length-1 axes beyond the fourth are
dropped. The writer restores the exact on-disk shape, so every case round-trips.

Native values are the scaled data (``stored * scl_slope + scl_inter``, as nibabel's
``get_fdata``). The writer keeps the header (affine, qform/sform codes, extensions, on-disk
dtype and scaling) and stores ``round((native - scl_inter) / scl_slope)`` clipped to the
dtype range for integer files, or the float value for float files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ulmed.errors import InputError, OutputError, unreadable
from ulmed.io.atomic import atomic_path
from ulmed.io.base import TargetKind, check_target_shape
from ulmed.io.kinds import NIFTI_SUFFIXES, is_nifti_path
from ulmed.io.record import IntensityMapping, Record

#: Errors nibabel, gzip and numpy raise on missing, truncated or corrupt files.
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, MemoryError)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class NiftiHandle:
    """What :func:`write_nifti` needs to write a record back as the file it came from.

    Args:
        image_class: ``nib.Nifti1Image`` or ``nib.Nifti2Image``.
        header: Copy of the input header (scaling already consumed by nibabel).
        affine: The image's best affine (sform, else qform).
        shape: On-disk data shape, restored on write.
        dtype: On-disk data dtype (with byte order).
        slope: ``scl_slope`` applied by nibabel (1.0 when unset).
        inter: ``scl_inter`` applied by nibabel (0.0 when unset).
    """

    image_class: type
    header: Any
    affine: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    slope: float
    inter: float

    @property
    def scaled(self) -> bool:
        """True when the file stores scaled values (slope != 1 or inter != 0)."""
        return not (self.slope == 1.0 and self.inter == 0.0)


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if Path(path).name.lower().endswith(".nii.gz") else ".nii"


def _load(path: Path, what: str) -> nib.Nifti1Image:
    """Load a NIfTI image header, raising InputError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found; check the path", path)
    if not is_nifti_path(path):
        raise InputError(f"not a NIfTI file (expected {' or '.join(NIFTI_SUFFIXES)})", path)
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        msg = f"cannot read this NIfTI {what} ({exc}); the file is corrupt or truncated, re-export it"
        raise InputError(unreadable(exc) or msg, path) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{type(img).__name__} is not a single-file NIfTI {what}; convert it to .nii or .nii.gz", path)
    return img


def _read_raw(img: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    """Stored (unscaled) data in the on-disk dtype."""
    try:
        return np.asarray(img.dataobj.get_unscaled())
    except _READ_ERRORS as exc:
        raise InputError(
            f"cannot read the NIfTI {what} data ({exc}); the file is truncated or corrupt, re-export it", path
        ) from exc


def _to_volume_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int, int]:
    """Map an on-disk shape to (X, Y, Z, T): drop trailing 1s past 4D, pad 2D/3D with 1s."""
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 4:
        raise InputError(
            f"NIfTI data of shape {tuple(shape)} has more than 4 dimensions; only 2D, 3D and 4D images are supported",
            path,
        )
    if len(dims) < 2:
        raise InputError(f"NIfTI data of shape {tuple(shape)} is not an image", path)
    dims += [1] * (4 - len(dims))
    return dims[0], dims[1], dims[2], dims[3]


def _native_range(dtype: np.dtype, slope: float, inter: float, native: np.ndarray) -> tuple[float, float, float]:
    """Valid native range and quantum of a file's on-disk dtype and scaling."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        ends = sorted((float(info.min) * slope + inter, float(info.max) * slope + inter))
        return ends[0], ends[1], abs(slope)
    lo, hi = -_F32_MAX, _F32_MAX
    if native.size:
        lo, hi = min(lo, float(native.min())), max(hi, float(native.max()))
    return lo, hi, 0.0


def read_nifti(path: Path, key: str, label_path: Path | None = None) -> Record:
    """Read a NIfTI volume (and optionally its label map) into a :class:`Record`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        key: Stable key of the record (the input's relative path).
        label_path: Optional label map of the same spatial shape; read, never modified.

    Returns:
        A record of kind ``"nifti"`` with ``spatial_dims=3``, channel-first image (see module
        docstring), the label map as target and a :class:`NiftiHandle`.

    Raises:
        InputError: The file is missing, truncated, corrupt, has an unsupported data type
            or shape, contains NaN/Inf, or the label map does not match.
    """
    path = Path(path)
    img = _load(path, "image")
    header = img.header
    dtype = header.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"NIfTI data type {dtype} is not supported (only integer and real float volumes); convert the image", path
        )
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    raw = _read_raw(img, path, "image")
    x, y, z, t = _to_volume_shape(raw.shape, path)
    volume = raw.reshape((x, y, z, t), order="F") if raw.ndim != 4 else raw
    if slope == 1.0 and inter == 0.0:
        native = volume  # integers stay integers, float32 stays float32
    else:
        native = volume.astype(np.float64) * slope + inter
    if np.issubdtype(native.dtype, np.floating) and not np.isfinite(native).all():
        raise InputError("contains NaN or Inf values; fix or remove the file before protecting it", path)
    image = np.ascontiguousarray(np.moveaxis(native, -1, 0))
    valid_min, valid_max, quantum = _native_range(dtype, slope, inter, native)
    mapping = IntensityMapping.for_data(native, valid_min, valid_max, quantum, unit="value", robust=True)
    target = None
    if label_path is not None:
        target = read_label_map(label_path, (x, y, z), image_path=path)
    handle = NiftiHandle(
        image_class=type(img),
        header=header.copy(),
        affine=np.array(img.affine, dtype=np.float64),
        shape=tuple(int(s) for s in raw.shape),
        dtype=dtype,
        slope=slope,
        inter=inter,
    )
    meta = {
        "shape": handle.shape,
        "spacing": tuple(float(v) for v in header.get_zooms()),
        "dtype": str(np.dtype(dtype).newbyteorder("=")),
        "affine_codes": (int(header["qform_code"]), int(header["sform_code"])),
        "ndim": len(handle.shape),
    }
    return Record(
        key=key, image=image, mapping=mapping, spatial_dims=3, kind="nifti", target=target, handle=handle, meta=meta
    )


def _to_stored(native: np.ndarray, handle: NiftiHandle) -> np.ndarray:
    """Quantise native values to the on-disk dtype with the file's own scaling."""
    dtype = handle.dtype
    values = np.asarray(native, dtype=np.float64)
    if handle.scaled:
        values = (values - handle.inter) / handle.slope
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    info = np.finfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


def write_nifti(record: Record, out_path: Path) -> None:
    """Write a record read by :func:`read_nifti` back as a NIfTI file, atomically.

    The header (affine, qform/sform codes, extensions, description), on-disk dtype and
    scaling of the input are kept; only the voxel values change.

    Args:
        record: A record of kind ``"nifti"`` whose handle is a :class:`NiftiHandle`.
        out_path: Destination ending in ``.nii`` or ``.nii.gz`` (the suffix picks compression).

    Raises:
        OutputError: The record is not a NIfTI record, the suffix is wrong, or writing fails.
    """
    out_path = Path(out_path)
    handle = record.handle
    if record.kind != "nifti" or not isinstance(handle, NiftiHandle):
        msg = f"record {record.key!r} was not read from a NIfTI file and cannot be written as one"
        raise OutputError(msg, out_path)
    if not is_nifti_path(out_path):
        raise OutputError(f"NIfTI output must end in {' or '.join(NIFTI_SUFFIXES)}", out_path)
    volume = np.moveaxis(np.asarray(record.image), 0, -1)  # (X, Y, Z, T)
    stored = _to_stored(volume, handle).reshape(handle.shape, order="F")
    img = handle.image_class(stored, handle.affine, header=handle.header.copy())
    img.set_data_dtype(handle.dtype)
    if handle.scaled:
        # Explicit scaling stops nibabel from choosing its own slope/intercept on save.
        img.header.set_slope_inter(handle.slope, handle.inter)
    try:
        with atomic_path(out_path, suffix=_nifti_suffix(out_path)) as tmp:
            nib.save(img, tmp)
    except (OSError, ValueError, HeaderDataError) as exc:
        msg = f"cannot write the NIfTI file ({exc}); check the output folder and free space"
        raise OutputError(msg, out_path) from exc


def read_label_map(path: Path, expected_shape: tuple[int, ...], image_path: Path | None = None) -> np.ndarray:
    """Read a NIfTI label map as an integer array of the image's spatial shape.

    The file is only read; the pipeline copies label files byte-for-byte. Float label maps
    are accepted when every value is a whole number (MSD stores some labels as float32).

    Args:
        path: ``.nii`` or ``.nii.gz`` label map.
        expected_shape: Spatial shape of the matching image record, ``(X, Y, Z)``.
        image_path: The matching image, named in the error message when shapes differ.

    Returns:
        The label map, shape ``expected_shape``; integer files keep their dtype, float
        files become ``int32``.

    Raises:
        InputError: The file is unreadable, not integer-valued, or its shape differs.
    """
    path = Path(path)
    img = _load(path, "label map")
    try:
        data = np.asarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read the label map data ({exc}); the file is truncated or corrupt", path) from exc
    x, y, z, t = _to_volume_shape(data.shape, path)
    if t != 1:
        raise InputError(f"label map of shape {data.shape} has more than one volume; give a 3D label map", path)
    data = data.reshape((x, y, z), order="F")
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError("label map has non-integer values; labels must be whole numbers", path)
        data = data.astype(np.int32)
    elif not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"label map data type {data.dtype} is not an integer type", path)
    return check_target_shape(data, expected_shape, path, image_path, TargetKind.LABEL_MAP)
