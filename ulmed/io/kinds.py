"""Which kind of data a path names, from its name alone.

The scanner and the pipeline ask this of every file of an input folder. Nothing here imports
a format library, so a run over DICOM files never loads nibabel or tifffile for the NIfTI and
image readers it does not use (:mod:`ulmed.io.nifti`, :mod:`ulmed.io.images`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "JPEG_SUFFIXES", "NIFTI_SUFFIXES", "is_image_path", "is_nifti_path", "output_relpath"]

#: 2D image files: PNG, TIFF, JPEG.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: JPEG inputs, written back as lossless PNG.
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: NIfTI-1/NIfTI-2 volumes.
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_image_path(path: Path) -> bool:
    """Whether ``path`` names a PNG, TIFF or JPEG file (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_nifti_path(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def output_relpath(rel: Path) -> Path:
    """Output relative path of an input image: JPEG becomes ``.png`` (lossless), others unchanged."""
    rel = Path(rel)
    return rel.with_suffix(".png") if rel.suffix.lower() in JPEG_SUFFIXES else rel
