"""Atomic writes: all-or-nothing, and outputs with a normal file's permissions."""

from __future__ import annotations

import os
import stat

import pytest

from ulmed.io.atomic import atomic_copy, atomic_path, atomic_write_bytes


def test_written_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
        src = tmp_path / "src.bin"
        src.write_bytes(b"y")
        os.chmod(src, 0o640)
        atomic_copy(src, tmp_path / "copy.bin")  # a copy keeps its source's mode
        assert stat.S_IMODE((tmp_path / "copy.bin").stat().st_mode) == 0o640
    finally:
        os.umask(mask)


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
