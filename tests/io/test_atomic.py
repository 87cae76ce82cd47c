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


def _full_disk(*args, **kwargs):
    raise OSError(28, None)  # strerror None, as some libraries raise it


def test_a_full_disk_names_the_file_and_the_reason_and_leaves_nothing(tmp_path, monkeypatch):
    from ulmed.errors import OutputError

    monkeypatch.setattr("pathlib.Path.write_bytes", _full_disk)
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(tmp_path / "m.json", b"{}")
    assert str(info.value).startswith(f"{tmp_path / 'm.json'}: ") and "No space left on device" in str(info.value)
    assert "None" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_no_room_for_the_temporary_names_the_reason(tmp_path, monkeypatch):
    from ulmed.errors import OutputError

    monkeypatch.setattr("tempfile.mkstemp", _full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write_bytes(tmp_path / "m.json", b"{}")


def test_a_source_that_cannot_be_read_is_not_called_an_output_error(tmp_path):
    from ulmed.errors import InputError

    with pytest.raises(InputError, match=r"cannot be read \(No such file or directory\); check the input"):
        atomic_copy(tmp_path / "missing.bin", tmp_path / "copy.bin")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_real_full_disk_through_atomic_file_is_an_output_error(tmp_path, monkeypatch):
    import tempfile

    import torch

    from ulmed.errors import OutputError
    from ulmed.io.atomic import atomic_file

    real = tempfile.mkstemp

    def mkstemp_on_full_disk(*args, **kwargs):  # the temporary is /dev/full: every write is ENOSPC
        fd, name = real(*args, **kwargs)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
    with pytest.raises(OutputError) as info, atomic_file(tmp_path / "state.pt") as fh:
        torch.save({"w": torch.zeros(4096)}, fh)
    assert str(tmp_path / "state.pt") in str(info.value) and "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_renames_its_files_only_at_the_end_with_their_digests(tmp_path):
    import hashlib

    from ulmed.io.atomic import atomic_batch

    targets = [tmp_path / "s" / f"IM{i}.dcm" for i in range(12)]  # more than BATCH_IN_FLIGHT
    with atomic_batch() as batch:
        for i, target in enumerate(targets):
            batch.write_bytes(target, bytes([i]) * 1000)
        assert not any(t.exists() for t in targets)  # nothing under a final name before the commit
    assert [t.read_bytes() for t in targets] == [bytes([i]) * 1000 for i in range(12)]
    assert batch.digests == {t: hashlib.sha256(t.read_bytes()).hexdigest() for t in targets}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(t.name for t in targets)
    assert all(stat.S_IMODE(t.stat().st_mode) != 0o600 for t in targets)


def test_a_batch_left_by_an_exception_leaves_nothing(tmp_path):
    from ulmed.io.atomic import atomic_batch

    with pytest.raises(RuntimeError), atomic_batch() as batch:
        batch.write_bytes(tmp_path / "a.dcm", b"a" * 100)
        raise RuntimeError("the next file failed")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_batch_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import ulmed.io.atomic as atomic
    from ulmed.errors import OutputError

    real = atomic._write_synced

    def second_fails(tmp, data):
        if tmp.name.startswith(".b.dcm."):
            raise OSError(28, None)
        return real(tmp, data)

    monkeypatch.setattr(atomic, "_write_synced", second_fails)
    with pytest.raises(OutputError) as info, atomic.atomic_batch() as batch:
        for name in ("a.dcm", "b.dcm", "c.dcm"):
            batch.write_bytes(tmp_path / name, b"x" * 100)
    assert str(info.value).startswith(f"{tmp_path / 'b.dcm'}: ") and "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_copy_whose_source_cannot_be_read_is_an_input_error_and_leaves_the_target(tmp_path, monkeypatch):
    import shutil

    from ulmed.errors import InputError

    source, target = tmp_path / "README.md", tmp_path / "out" / "README.md"
    source.write_text("new")
    target.parent.mkdir()
    target.write_text("copied before")

    def refused(src, dst, **kwargs):  # what the system says to a user without read permission
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(shutil, "copy2", refused)
    with pytest.raises(InputError, match=r"cannot be read \(Permission denied\); check its permissions") as err:
        atomic_copy(source, target)
    assert str(err.value.path) == str(source)
    assert target.read_text() == "copied before" and sorted(p.name for p in target.parent.iterdir()) == ["README.md"]
