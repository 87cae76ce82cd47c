"""What one DICOM instance's header says about its pixel data, checked and kept true.

:func:`size_mismatch` compares Rows x Columns x frames x samples with what the pixel data
holds, before decoding: pydicom crops native data that is longer than the header says
(with a warning only), and some codec plugins fail badly on such files (the RLE one
panics). :func:`describe_values` keeps the attributes that state the smallest and
largest stored value true once the pixels are replaced.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, RLELossless

__all__ = ["describe_values", "size_mismatch"]

_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC marker, then SIZ
# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55 (F7)
_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
#: (smallest, largest) attribute pairs that describe the stored values of one image or of its series.
IMAGE_RANGE = ("SmallestImagePixelValue", "LargestImagePixelValue")
SERIES_RANGE = ("SmallestPixelValueInSeries", "LargestPixelValueInSeries")
#: Retired per-plane values: removed when the pixels change.
PLANE_RANGE = ("SmallestImagePixelValueInPlane", "LargestImagePixelValueInPlane")


def _j2k_shape(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 SIZ segment, or None."""
    i = frame.find(_J2K_SIZ, 0, 4096)
    if i < 0 or len(frame) < i + 42:
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">4I", frame[i + 8 : i + 24])
    (components,) = struct.unpack(">H", frame[i + 40 : i + 42])
    return ysiz - yo, xsiz - xo, components


def _jpeg_shape(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the start-of-frame segment of JPEG or JPEG-LS, or None."""
    if frame[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 10 <= len(frame):
            rows, cols = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return (rows, cols, frame[pos + 9]) if rows else None  # 0 rows: given later by a DNL marker
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _rle_length(frame: bytes) -> int | None:
    """The decoded length of the first segment of an RLE frame (PackBits), or None."""
    if len(frame) < 64:
        return None
    count, first, second = struct.unpack("<3I", frame[:12])
    if count < 1 or first != 64:
        return None
    segment = frame[64 : second if count > 1 and second > 64 else len(frame)]
    n, i = 0, 0
    while i < len(segment):
        c = segment[i]
        if c < 128:  # c + 1 literal bytes
            n, i = n + c + 1, i + c + 2
        elif c > 128:  # the next byte 257 - c times
            n, i = n + 257 - c, i + 2
        else:
            i += 1
    return n


def _encapsulated_size(ds: Dataset, ts: UID, frames: int, rows: int, cols: int, samples: int) -> tuple[int, str] | None:
    """(values per frame, how the first frame says so) when its codestream disagrees with the header, else None."""
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=frames), None)
    except Exception:  # noqa: BLE001 - damaged encapsulation: the decoder reports it
        return None
    if not frame:
        return None
    if ts == RLELossless:
        n = _rle_length(frame)
        if n is None or rows * cols <= n < rows * cols + min(rows, cols):  # short padding is tolerated
            return None
        return n * samples, f"its first frame decodes to {n} pixels"
    shape = _j2k_shape(frame) or _jpeg_shape(frame)
    if shape is None or shape == (rows, cols, samples):
        return None
    r, c, s = shape
    return r * c * s, f"its first frame is {r} x {c} x {s}"


def size_mismatch(ds: Dataset, transfer_syntax: UID) -> str | None:
    """Why the pixel data does not fit Rows x Columns x frames x samples, or None when it fits.

    Native data is measured by its length (trailing padding shorter than one row or column
    is tolerated); encapsulated data by the first frame's codestream header (JPEG, JPEG-LS,
    JPEG 2000) or decoded RLE length. Never decodes an image; None when it cannot tell.

    Args:
        ds: A dataset with its pixel data read.
        transfer_syntax: The transfer syntax its pixel data is in.

    Returns:
        A one-line reason naming both sizes, or None.
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, frames = int(ds.get("SamplesPerPixel") or 1), max(1, int(ds.get("NumberOfFrames") or 1))
        value_bytes = int(ds.BitsAllocated) // 8
        data = ds.PixelData
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    want = rows * cols * frames * samples
    header = f"{want} ({rows} x {cols} x {frames} x {samples})"
    if not transfer_syntax.is_encapsulated:
        expected = int(get_expected_length(ds, "bytes"))  # YBR_FULL_422 holds 2 values per pixel
        if expected <= len(data) < expected + min(rows, cols) * max(1, value_bytes):
            return None
        held = f"{len(data) * want // max(1, expected)} values"
    else:
        found = _encapsulated_size(ds, transfer_syntax, frames, rows, cols, samples)
        if found is None:
            return None
        held = f"{found[0] * frames} values ({found[1]})"
    return (f"pixel data holds {held}, Rows x Columns x frames x samples says {header}; "
            "the file is damaged or its header is wrong")


def describe_values(ds: Dataset, low: int, high: int, signed: bool) -> None:
    """Make the value-range attributes of ``ds`` true for its new stored pixel values.

    Smallest/LargestImagePixelValue become ``low``/``high``; the series pair
    (Smallest/LargestPixelValueInSeries) and the retired per-plane pair are removed, since
    one instance cannot know the new range of its whole series. Only attributes that are
    present are touched: none is added.

    Args:
        ds: The dataset whose pixel data was just replaced.
        low: The smallest stored value of this instance.
        high: The largest stored value of this instance.
        signed: PixelRepresentation is 1 (the attributes are SS, else US).
    """
    for name, value in zip((*IMAGE_RANGE, *SERIES_RANGE, *PLANE_RANGE), (low, high, None, None, None, None)):
        if name in ds:
            tag = ds.data_element(name).tag
            del ds[tag]
            lo, hi = (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)
            if value is not None and lo <= value <= hi:  # 32-bit values do not fit US/SS: removed
                ds.add_new(tag, "SS" if signed else "US", int(value))
