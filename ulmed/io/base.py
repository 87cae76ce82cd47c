"""What every writer needs to know about a run, independent of the file format."""

from __future__ import annotations

from dataclasses import dataclass

from ulmed.errors import ConfigError

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
    """

    method: str = "none"
    budget: str = ""
    uid_salt: str = "ulmed"
    dicom_encoding: str = "explicit"

    def __post_init__(self) -> None:
        if self.dicom_encoding not in DICOM_ENCODINGS:
            raise ConfigError(
                f"DICOM output encoding {self.dicom_encoding!r} is not one of {', '.join(DICOM_ENCODINGS)}; "
                "lossy encodings are refused because they would erase the perturbation"
            )
