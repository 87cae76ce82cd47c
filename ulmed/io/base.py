"""What every writer needs to know about a run, independent of the file format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError, InputError
from ulmed.io.deidentify import DeidentifyOptions

__all__ = ["DICOM_ENCODINGS", "DicomEncoding", "TargetKind", "WriteOptions", "check_target_shape"]


class Norm(StrEnum):
    """The norm of a perturbation budget (used by quantisation here and by the core's budgets)."""

    LINF = "linf"
    L2 = "l2"


#: The norm values, in definition order.
NORMS: tuple[str, ...] = names(Norm)


class DicomEncoding(StrEnum):
    """Lossless output encodings a DICOM writer may be asked for.

    Lossy ones are refused, because lossy compression would erase the perturbation.
    """

    #: Explicit VR Little Endian, uncompressed.
    EXPLICIT = "explicit"
    #: RLE Lossless.
    RLE = "rle"
    #: JPEG-LS Lossless.
    JPEGLS = "jpegls"
    #: JPEG 2000 Lossless (colour images use the reversible colour transform, YBR_RCT).
    J2K = "j2k"


#: The :class:`DicomEncoding` values, in definition order.
DICOM_ENCODINGS: tuple[str, ...] = names(DicomEncoding)


class TargetKind(StrEnum):
    """What a target array of an image is, as :func:`check_target_shape` names it."""

    MASK = "mask"
    LABEL_MAP = "label map"


@dataclass(frozen=True)
class WriteOptions:
    """Options shared by the writers of one run.

    Args:
        method: Name of the protection method (goes into DICOM DerivationDescription).
        budget: Human-readable budget, e.g. ``"Linf 8/255"``; goes into DerivationDescription.
        uid_salt: Salt mixed into new DICOM UIDs so that reruns agree and different
            protections of the same data do not collide.
        dicom_encoding: A :class:`DicomEncoding` or its value (any case); kept as the member.
        deidentify: When given, DICOM datasets are de-identified (dicognito, extra
            ``ulmed[deid]``) before they are written; see :mod:`ulmed.io.deidentify`.
    """

    method: str = "none"
    budget: str = ""
    uid_salt: str = "ulmed"
    dicom_encoding: DicomEncoding | str = DicomEncoding.EXPLICIT
    deidentify: DeidentifyOptions | None = None

    def __post_init__(self) -> None:
        if self.deidentify is not None and not isinstance(self.deidentify, DeidentifyOptions):
            raise ConfigError(f"deidentify must be DeidentifyOptions or None, not {type(self.deidentify).__name__}")
        try:
            encoding = look_up(self.dicom_encoding, DicomEncoding, "DICOM output encoding")
        except ConfigError as exc:
            reason = f"{str(exc).rstrip('.')}; lossy encodings are refused because they would erase the perturbation"
            raise ConfigError(reason) from None
        object.__setattr__(self, "dicom_encoding", encoding)


#: How each kind of target names its shape in messages.
_TARGET_WORDS = {TargetKind.MASK: ("mask size (H, W) =", "size"), TargetKind.LABEL_MAP: ("label map shape", "shape")}


def check_target_shape(
    data: np.ndarray, expected_shape: tuple[int, ...], path: Path, image_path: Path | None, noun: TargetKind | str
) -> np.ndarray:
    """Return ``data`` (contiguous) if its shape is the image's, else raise one clear error.

    Args:
        data: The mask or label map as read.
        expected_shape: The image's spatial shape.
        path: The mask/label file (named in the error).
        image_path: The matching image, named in the error when given.
        noun: What ``data`` is: a :class:`TargetKind` or its value (``"mask"``, ``"label map"``).

    Raises:
        InputError: The shapes differ.
        ConfigError: ``noun`` is not a :class:`TargetKind`.
    """
    kind = look_up(noun, TargetKind, "target kind")
    expected = tuple(int(s) for s in expected_shape)
    if data.shape != expected:
        lead, word = _TARGET_WORDS[kind]
        against = f"image {image_path}" if image_path is not None else "the image"
        raise InputError(
            f"{lead} {data.shape} does not match {against} {word} {expected}; "
            f"check that this {kind} belongs to that image",
            path,
        )
    return np.ascontiguousarray(data)
