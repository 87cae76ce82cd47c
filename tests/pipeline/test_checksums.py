"""SHA256SUMS: written as GNU sha256sum writes it, read strictly, and a changed byte is caught."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from ulmed.errors import InputError, OutputError
from ulmed.pipeline.checksums import SUMS_NAME, read_sums, release_files, write_sums


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "release"
    (root / "images").mkdir(parents=True)
    (root / "images/a.png").write_bytes(b"image a")
    (root / "DATACARD.md").write_text("# card\n")
    (root / ".ulmed").mkdir()
    (root / ".ulmed/journal.jsonl").write_text("{}\n")  # run state: not part of a release
    return root


def test_sums_list_every_file_sorted_in_sha256sum_format(release):
    path, n = write_sums(release)
    assert path == release / SUMS_NAME and n == 2
    digest, card = hashlib.sha256(b"image a").hexdigest(), hashlib.sha256(b"# card\n").hexdigest()
    assert path.read_text().splitlines() == [f"{card}  DATACARD.md", f"{digest}  images/a.png"]
    assert read_sums(path) == {"DATACARD.md": card, "images/a.png": digest}
    assert release_files(release) == ["DATACARD.md", "images/a.png"]  # neither SHA256SUMS nor .ulmed/


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU coreutils' sha256sum is not installed")
def test_sha256sum_accepts_the_file_and_rejects_a_changed_byte(release):
    write_sums(release)
    check = ["sha256sum", "--quiet", "-c", SUMS_NAME]
    assert subprocess.run(check, cwd=release, capture_output=True).returncode == 0
    (release / "images/a.png").write_bytes(b"image b")  # one byte changed
    proc = subprocess.run(check, cwd=release, capture_output=True, text=True)
    assert proc.returncode == 1 and "images/a.png: FAILED" in proc.stdout


def test_names_with_a_newline_or_backslash_are_escaped_as_gnu_does(tmp_path):
    (tmp_path / "a\nb.txt").write_bytes(b"x")
    (tmp_path / "c\\d.txt").write_bytes(b"y")
    path, _ = write_sums(tmp_path)
    lines = path.read_text().split("\n")
    assert all(line.startswith("\\") for line in lines if line)
    assert set(read_sums(path)) == {"a\nb.txt", "c\\d.txt"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f"{'0' * 64}  /etc/passwd", "absolute path"),
        (f"{'0' * 64}  ../outside.txt", "steps out of the release"),
        (f"{'0' * 64}  .ulmed/journal.jsonl", "run-state folder"),
        ("not a digest  a.txt", "not '<digest>  <path>'"),
        (f"{'0' * 64}  a.txt\n{'1' * 64}  ./a.txt", "listed twice"),
    ],
)
def test_a_malformed_line_is_refused(tmp_path, line, why):
    path = tmp_path / SUMS_NAME
    path.write_text(line + "\n")
    with pytest.raises(InputError, match="malformed") as info:
        read_sums(path)
    assert why in str(info.value)


def test_an_empty_file_and_a_link_are_refused(tmp_path):
    (tmp_path / SUMS_NAME).write_text("")
    with pytest.raises(InputError, match="lists no files"):
        read_sums(tmp_path / SUMS_NAME)
    (tmp_path / "real.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    with pytest.raises(OutputError, match="plain files only"):
        write_sums(tmp_path)
