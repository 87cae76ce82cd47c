"""Tests of input discovery: what a tree holds, with no format flag."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.io.dicom_files import data
from ulmed.io.discover import discover
from ulmed.pipeline.protect import protect_path

BROKEN = "broken symbolic link; its target does not exist"


def linked_tree(root: Path) -> Path:
    """A DICOM file, and broken links named like every kind of input (DICOM, NIfTI, image, other) and a loop."""
    root.mkdir(parents=True)
    shutil.copy(data("CT_small.dcm"), root / "CT_small.dcm")
    for name in ("x.dcm", "scan.nii.gz", "photo.png", "notes.txt", "noext"):
        os.symlink(root / "gone" / name, root / name)
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    return root


BROKEN_NAMES = {"x.dcm", "scan.nii.gz", "photo.png", "notes.txt", "noext"}


def test_broken_symlinks_are_bad_inputs_with_one_clear_reason(tmp_path: Path) -> None:
    root = linked_tree(tmp_path / "in")
    inv = discover(root)
    reasons = {p.name: r for p, r in (*inv.bad, *inv.dicom.bad)}
    assert {n: reasons.get(n) for n in BROKEN_NAMES} == dict.fromkeys(BROKEN_NAMES, BROKEN)
    assert "symbolic link" in reasons["loop_a"] and "loop" in reasons["loop_a"] and "\n" not in reasons["loop_a"]
    assert [s.files for s in inv.dicom.series] == [[root / "CT_small.dcm"]]
    assert not inv.nifti and not inv.images and not inv.others


def test_a_link_to_a_folder_is_skipped_and_said_so(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(data("CT_small.dcm"), root / "CT_small.dcm")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(data("MR_small.dcm"), tmp_path / "elsewhere" / "MR_small.dcm")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    inv = discover(root)
    skipped = [(p.name, r.split(";")[0]) for p, r in inv.skipped]
    assert skipped == [("linked", "symbolic link to a folder, not followed")]
    assert len(inv.dicom.series) == 1 and not inv.bad


def test_broken_symlinks_fail_in_the_manifest_not_with_a_traceback(tmp_path: Path) -> None:
    root = linked_tree(tmp_path / "in")
    manifest = protect_path(root, tmp_path / "out", method="random")
    entries = {e.input: e for e in manifest.entries}
    assert entries["CT_small.dcm"].status == "written"
    for name in BROKEN_NAMES:
        assert (entries[name].status, entries[name].reason) == ("failed", BROKEN)
    assert entries["loop_a"].status == entries["loop_b"].status == "failed"
