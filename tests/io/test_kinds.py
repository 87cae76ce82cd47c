"""Tests for ulmed.io.kinds: the kind of a file from its name, without the format libraries."""

import subprocess
import sys
from pathlib import Path

from ulmed.io.kinds import is_image_path, is_nifti_path, output_relpath


def test_image_suffixes_and_output_names() -> None:
    assert all(is_image_path(Path(f"a{s}")) for s in (".png", ".TIF", ".tiff", ".jpg", ".JPEG"))
    assert not is_image_path(Path("a.nii.gz")) and not is_image_path(Path("a.bmp"))
    assert output_relpath(Path("x/a.jpg")) == Path("x/a.png")
    assert output_relpath(Path("x/a.JPEG")) == Path("x/a.png")
    assert output_relpath(Path("x/a.png")) == Path("x/a.png")
    assert output_relpath(Path("x/a.tif")) == Path("x/a.tif")


def test_nifti_suffixes() -> None:
    assert is_nifti_path(Path("a/b.nii")) and is_nifti_path(Path("B.NII.GZ"))
    assert not is_nifti_path(Path("a.gz")) and not is_nifti_path(Path("a.png"))


def test_the_scanner_and_the_pipeline_load_no_nifti_or_tiff_library() -> None:
    """A DICOM run must not pay for nibabel and tifffile: they load only with the reader that needs them."""
    code = (
        "import sys\n"
        "import ulmed.io.discover, ulmed.pipeline.protect\n"
        "print(*(m in sys.modules for m in ('nibabel', 'tifffile', 'yaml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
