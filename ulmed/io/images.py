"""2D images (PNG, TIFF, JPEG) and their masks to and from :class:`Record`.

Layout: grey ``(H, W)`` becomes ``(1, H, W)``, RGB ``(H, W, 3)`` becomes ``(3, H, W)``;
``spatial_dims`` is 2. Native values are the stored 8- or 16-bit values and the mapping
spans the full dtype range (0..255 or 0..65535), so a budget of 8/255 on an 8-bit image
means 8 grey levels. One quantisation step is 1.

Choices:

* An alpha channel (RGBA, grey + alpha) is kept out of the record and written back
  unchanged; only the colour/grey channels can be perturbed.
* PNG in -> PNG out, TIFF in -> TIFF out (same dtype, photometric, planar layout,
  resolution; deflate stays deflate, other compressions are written uncompressed).
  JPEG is accepted as input but written as lossless PNG (see :func:`output_relpath`),
  because JPEG compression would erase the perturbation. EXIF is not carried over.
* Refused with an InputError saying how to convert: palette, 1/2/4-bit, 16-bit colour PNG
  (Pillow would silently drop to 8 bits), CMYK/YCbCr, float TIFF, multi-page TIFF.
* Masks are returned with their values as stored (a 0/255 mask stays 0/255; a ``1``-mode
  mask becomes 0/1); :func:`read_image` stores that array as the record's target. Callers
  that need class indices binarise with ``mask > 0``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from ulmed.errors import InputError, OutputError, unreadable
from ulmed.io.atomic import atomic_path
from ulmed.io.base import TargetKind, check_target_shape
from ulmed.io.kinds import IMAGE_SUFFIXES, JPEG_SUFFIXES
from ulmed.io.record import IntensityMapping, Record

_PNG, _TIFF, _JPEG = (".png",), (".tif", ".tiff"), JPEG_SUFFIXES
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, KeyError, IndexError,
                Image.DecompressionBombError)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageHandle:
    """What :func:`write_image` needs to write a record back.

    Args:
        fmt: Output format, ``"png"`` or ``"tiff"``.
        source_fmt: Input format, ``"png"``, ``"jpeg"`` or ``"tiff"``.
        dtype: Stored dtype (uint8 or uint16).
        alpha: Alpha channel ``(H, W)`` written back unchanged, or None.
        options: Format-specific save options (PNG dpi/ICC/text, TIFF tags).
    """

    fmt: str
    source_fmt: str
    dtype: np.dtype
    alpha: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _png_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when the header is not PNG."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_pillow(path: Path, what: str) -> tuple[Image.Image, np.ndarray]:
    try:
        with Image.open(path) as im:
            im.load()
            return im, np.asarray(im)
    except _READ_ERRORS as exc:
        msg = f"cannot read this {what} ({exc}); the file is truncated or not a valid image, re-export it"
        raise InputError(unreadable(exc) or msg, path) from exc


def _read_tiff(path: Path, what: str) -> tuple[tifffile.TiffPage, np.ndarray]:
    try:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) != 1:
                msg = f"multi-page TIFF ({len(tf.pages)} pages) is not supported; split it into single images"
                raise InputError(msg, path)
            page = tf.pages[0]
            data = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and data.ndim == 3:
                data = np.moveaxis(data, 0, -1)
            return page, data
    except _READ_ERRORS as exc:
        raise InputError(
            f"cannot read this TIFF {what} ({exc}); the file is truncated, corrupt or needs the imagecodecs "
            "package for its compression",
            path,
        ) from exc


def _check_input(path: Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found; check the path", path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"not a PNG, TIFF or JPEG {what} (expected {', '.join(IMAGE_SUFFIXES)})", path)
    return "png" if suffix in _PNG else "tiff" if suffix in _TIFF else "jpeg"


def _split_pillow(path: Path, fmt: str, im: Image.Image, data: np.ndarray) -> tuple[np.ndarray, ImageHandle]:
    """Pixels (H, W[, C]) and handle of a PNG/JPEG; refuses what cannot round-trip."""
    convert = "convert it to 8- or 16-bit grey or 8-bit RGB"
    if fmt == "png":
        depth = _png_depth(path)
        if depth is None or depth[0] not in (8, 16) or (depth[0] == 16 and depth[1] != 0):
            bits = "unknown" if depth is None else f"{depth[0]}-bit colour type {depth[1]}"
            raise InputError(f"PNG layout ({bits}) is not supported; {convert} (16-bit colour: use TIFF)", path)
    alpha = None
    if im.mode in ("LA", "RGBA"):
        data, alpha = data[..., :-1], np.ascontiguousarray(data[..., -1])
        if im.mode == "LA":
            data = data[..., 0]
    elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
        data = data.astype(np.uint16)  # PNG depth was checked to be 16 above
    elif im.mode not in ("L", "RGB"):
        raise InputError(f"image mode {im.mode} is not supported; {convert}", path)
    options: dict[str, Any] = {}
    if "dpi" in im.info:
        options["dpi"] = im.info["dpi"]
    if "icc_profile" in im.info:
        options["icc_profile"] = im.info["icc_profile"]
    if fmt == "png":
        if "transparency" in im.info:
            options["transparency"] = im.info["transparency"]
        text = {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}
        if text:
            info = PngImagePlugin.PngInfo()
            for k, v in text.items():
                info.add_text(k, v)
            options["pnginfo"] = info
    return data, ImageHandle(fmt="png", source_fmt=fmt, dtype=data.dtype, alpha=alpha, options=options)


def _split_tiff(path: Path, page: tifffile.TiffPage, data: np.ndarray) -> tuple[np.ndarray, ImageHandle]:
    """Pixels (H, W[, C]) and handle of a TIFF; refuses what cannot round-trip."""
    photometric = tifffile.PHOTOMETRIC(page.photometric)
    if data.dtype not in (np.uint8, np.uint16):
        raise InputError(f"TIFF data type {data.dtype} is not supported; convert to 8- or 16-bit unsigned", path)
    grey = photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE) and data.ndim == 2
    rgb = photometric == tifffile.PHOTOMETRIC.RGB and data.ndim == 3 and data.shape[-1] in (3, 4)
    if not (grey or rgb):
        raise InputError(
            f"TIFF layout (photometric {photometric.name}, shape {data.shape}) is not supported; "
            "convert to a single grey or RGB image",
            path,
        )
    alpha = None
    if rgb and data.shape[-1] == 4:
        data, alpha = data[..., :3], np.ascontiguousarray(data[..., 3])
    deflate = (tifffile.COMPRESSION.ADOBE_DEFLATE, tifffile.COMPRESSION.DEFLATE)
    options: dict[str, Any] = {
        "photometric": photometric,
        "planarconfig": "separate" if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and rgb else None,
        "compression": "zlib" if page.compression in deflate else None,
        "extrasamples": tuple(page.extrasamples) or None,
        "metadata": None,
    }
    if "XResolution" in page.tags and "YResolution" in page.tags:
        options["resolution"] = page.resolution
        options["resolutionunit"] = page.resolutionunit
    return data, ImageHandle(fmt="tiff", source_fmt="tiff", dtype=data.dtype, alpha=alpha, options=options)


def read_image(path: Path, key: str, mask_path: Path | None = None) -> Record:
    """Read a PNG, TIFF or JPEG image (and optionally its mask) into a :class:`Record`.

    Args:
        path: Image file.
        key: Stable key of the record (the input's relative path).
        mask_path: Optional mask of the same height and width; stored as the target.

    Returns:
        A record of kind ``"image"``, ``spatial_dims=2``, image ``(C, H, W)`` in the stored
        dtype, mapping over the full 8/16-bit range, and an :class:`ImageHandle`.

    Raises:
        InputError: The file is missing, truncated or of an unsupported layout, or the
            mask does not match.
    """
    path = Path(path)
    fmt = _check_input(path, "image")
    if fmt == "tiff":
        page, data = _read_tiff(path, "image")
        data, handle = _split_tiff(path, page, data)
    else:
        im, data = _read_pillow(path, "image")
        data, handle = _split_pillow(path, fmt, im, data)
    image = np.ascontiguousarray(data[np.newaxis] if data.ndim == 2 else np.moveaxis(data, -1, 0))
    top = float(np.iinfo(data.dtype).max)
    mapping = IntensityMapping(low=0.0, high=top, valid_min=0.0, valid_max=top, quantum=1.0, unit="value")
    target = None
    if mask_path is not None:
        target = read_mask(mask_path, image.shape[1:], image_path=path)
    meta = {
        "shape": tuple(int(s) for s in image.shape[1:]),
        "channels": int(image.shape[0]),
        "dtype": str(data.dtype),
        "format": fmt,
        "alpha": handle.alpha is not None,
    }
    if "dpi" in handle.options:
        meta["dpi"] = tuple(float(v) for v in handle.options["dpi"])
    return Record(key=key, image=image, mapping=mapping, spatial_dims=2, kind="image", target=target,
                  handle=handle, meta=meta)


def write_image(record: Record, out_path: Path) -> None:
    """Write a record read by :func:`read_image` as PNG or TIFF, atomically.

    Values are rounded, clipped to the dtype range and cast to the input's dtype; the
    alpha channel and the format's save options are restored.

    Args:
        record: A record of kind ``"image"`` whose handle is an :class:`ImageHandle`.
        out_path: Destination; ``.png`` for PNG/JPEG input, ``.tif``/``.tiff`` for TIFF
            (use :func:`output_relpath`).

    Raises:
        OutputError: The record is not an image record, the suffix does not match the
            output format, or writing fails.
    """
    out_path = Path(out_path)
    handle = record.handle
    if record.kind != "image" or not isinstance(handle, ImageHandle):
        raise OutputError(f"record {record.key!r} was not read from a 2D image and cannot be written as one", out_path)
    allowed = _PNG if handle.fmt == "png" else _TIFF
    if out_path.suffix.lower() not in allowed:
        raise OutputError(f"{handle.fmt.upper()} output must end in {' or '.join(allowed)}", out_path)
    top = np.iinfo(handle.dtype).max
    pixels = np.clip(np.rint(np.asarray(record.image, dtype=np.float64)), 0, top).astype(handle.dtype)
    pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    if handle.alpha is not None:
        pixels = np.dstack([pixels, handle.alpha])
    try:
        with atomic_path(out_path) as tmp:
            if handle.fmt == "png":
                Image.fromarray(pixels).save(tmp, format="PNG", **handle.options)
            else:
                options = dict(handle.options)
                if options.get("planarconfig") == "separate":
                    pixels = np.ascontiguousarray(np.moveaxis(pixels, -1, 0))
                tifffile.imwrite(tmp, pixels, **{k: v for k, v in options.items() if v is not None or k == "metadata"})
    except (OSError, ValueError, TypeError) as exc:
        raise OutputError(f"cannot write the image ({exc}); check the output folder and free space", out_path) from exc


def read_mask(path: Path, expected_shape: tuple[int, ...], image_path: Path | None = None) -> np.ndarray:
    """Read a 2D mask as an integer array with its values as stored.

    Grey, 16-bit, palette (index) and bilevel masks are accepted; an RGB(A) mask is
    accepted when its colour channels are equal. The file is only read.

    Args:
        path: PNG, TIFF or JPEG mask (JPEG masks are lossy; prefer PNG).
        expected_shape: ``(H, W)`` of the matching image.
        image_path: The matching image, named in the error message when sizes differ.

    Returns:
        Integer array of shape ``expected_shape`` (``uint8``/``uint16`` as stored; ``1``-mode
        masks become 0/1 ``uint8``).

    Raises:
        InputError: The mask is unreadable, not integer, multi-colour, or of the wrong size.
    """
    path = Path(path)
    fmt = _check_input(path, "mask")
    if fmt == "tiff":
        _, data = _read_tiff(path, "mask")
    else:
        im, data = _read_pillow(path, "mask")
        if im.mode == "1":
            data = data.astype(np.uint8)
        elif im.mode in ("LA", "RGBA"):
            data = data[..., :-1]
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"mask data type {data.dtype} is not an integer type; save the mask as 8/16-bit", path)
    if data.ndim == 3:
        if not all(np.array_equal(data[..., 0], data[..., c]) for c in range(1, data.shape[-1])):
            msg = "colour mask with differing channels is not supported; save it as a grey label image"
            raise InputError(msg, path)
        data = data[..., 0]
    return check_target_shape(data, expected_shape, path, image_path, TargetKind.MASK)
