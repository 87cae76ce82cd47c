"""Tests of :mod:`ulmed.io.labels`: the CSV that maps inputs to class labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulmed.errors import InputError
from ulmed.io.labels import load_labels


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("header", ["image,label", "Path,Class", "filename,target", "key,label,extra"])
def test_labels_by_path_with_any_known_header(tmp_path: Path, header: str) -> None:
    rows = "a/1.png,0\n b/2.png ,1\n" if header.count(",") == 1 else "a/1.png,0,x\n b/2.png ,1,y\n"
    assert load_labels(_csv(tmp_path, f"{header}\n{rows}")) == {"a/1.png": 0, "b/2.png": 1}  # paths stripped


def test_the_first_known_column_wins(tmp_path: Path) -> None:
    assert load_labels(_csv(tmp_path, "file,image,class,label\nx.png,y.png,3,4\n")) == {"y.png": 4}


@pytest.mark.parametrize(("text", "match"), [
    ("", "no rows"),
    ("image,label\n", "no rows"),
    ("name,label\na.png,1\n", r"needs a path column \(image/path/file/filename/key\) and a label column"),
    ("image,score\na.png,1\n", r"a label column \(label/class/target\)"),
    ("image,label\na.png,1\nb.png,cat\n", "line 3: label 'cat' is not an integer"),
])
def test_bad_labels_files_say_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(InputError, match=match) as err:
        load_labels(path)
    assert err.value.path == str(path)


def test_a_missing_labels_file_points_at_the_option(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the labels file .*; check --labels"):
        load_labels(tmp_path / "missing.csv")
