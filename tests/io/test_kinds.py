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


def test_the_scanner_and_the_pipeline_load_no_format_library() -> None:
    """A run pays only for the formats it reads: each library loads with the first reader that needs it."""
    code = (
        "import sys\n"
        "import ulmed.io.discover, ulmed.pipeline.protect, ulmed.cli\n"
        "print(*(m in sys.modules for m in ('pydicom', 'nibabel', 'tifffile', 'yaml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 4


def test_an_image_folder_is_found_without_pydicom(tmp_path: Path) -> None:
    """PNGs and NIfTI volumes are found by name, without pydicom; a file of no known suffix is probed with it."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ulmed.io.discover import discover\n"
        "inv = discover(sys.argv[1])\n"
        "print(len(inv.images), len(inv.nifti), 'pydicom' in sys.modules)\n"
        "(Path(sys.argv[1]) / 'notes.txt').write_text('no DICM marker at offset 128')\n"
        "inv = discover(sys.argv[1])\n"
        "print(len(inv.others), 'pydicom' in sys.modules)\n"
    )
    (tmp_path / "a.png").write_bytes(b"png")  # named, not read: discovery sorts by name
    (tmp_path / "b.nii.gz").write_bytes(b"nii")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "False", "1", "True"]
