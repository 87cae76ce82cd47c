"""What every writer needs to know about a run, independent of the file format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulmed.errors import ConfigError, InputError
from ulmed.io.deidentify import DeidentifyOptions

#: Lossless output encodings a DICOM writer may be asked for. Lossy ones are refused,
#: because lossy compression would erase the perturbation.
DICOM_ENCODINGS = ("explicit", "rle", "jpegls", "j2k")


@dataclass(frozen=True)
class WriteOptions:
    """Options shared by the writers of one run.

    Args:
        method: Name of the protection method (goes into DICOM DerivationDescription).
        budget: Human-readable budget, e.g. ``"Linf 8/255"``; goes into DerivationDescription.
        uid_salt: Salt mixed into new DICOM UIDs so that reruns agree and different
            protections of the same data do not collide.
        dicom_encoding: One of :data:`DICOM_ENCODINGS`.
        deidentify: When given, DICOM datasets are de-identified (dicognito, extra
            ``ulmed[deid]``) before they are written; see :mod:`ulmed.io.deidentify`.
    """

    method: str = "none"
    budget: str = ""
    uid_salt: str = "ulmed"
    dicom_encoding: str = "explicit"
    deidentify: DeidentifyOptions | None = None

    def __post_init__(self) -> None:
        if self.deidentify is not None and not isinstance(self.deidentify, DeidentifyOptions):
            raise ConfigError(f"deidentify must be DeidentifyOptions or None, not {type(self.deidentify).__name__}")
        if self.dicom_encoding not in DICOM_ENCODINGS:
            raise ConfigError(
                f"DICOM output encoding {self.dicom_encoding!r} is not one of {', '.join(DICOM_ENCODINGS)}; "
                "lossy encodings are refused because they would erase the perturbation"
            )


#: How each kind of target names its shape in messages.
_TARGET_WORDS = {"mask": ("mask size (H, W) =", "size"), "label map": ("label map shape", "shape")}


def check_target_shape(
    data: np.ndarray, expected_shape: tuple[int, ...], path: Path, image_path: Path | None, noun: str
) -> np.ndarray:
    """Return ``data`` (contiguous) if its shape is the image's, else raise one clear error.

    Args:
        data: The mask or label map as read.
        expected_shape: The image's spatial shape.
        path: The mask/label file (named in the error).
        image_path: The matching image, named in the error when given.
        noun: ``"mask"`` or ``"label map"``.

    Raises:
        InputError: The shapes differ.
    """
    expected = tuple(int(s) for s in expected_shape)
    if data.shape != expected:
        lead, word = _TARGET_WORDS[noun]
        against = f"image {image_path}" if image_path is not None else "the image"
        raise InputError(
            f"{lead} {data.shape} does not match {against} {word} {expected}; check that this {noun} belongs to that image",
            path,
        )
    return np.ascontiguousarray(data)
