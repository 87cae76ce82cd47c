"""The train/test split: a stable subject hash (same everywhere, any file order), split.json, the fixed split."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re

import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.eval.split import (
    SPLIT_FILE,
    SPLIT_SALT,
    SplitRule,
    file_stem,
    fixed_split,
    hash_split,
    resolve_split,
    subject_of,
)

CASES = [f"images/case{i:02d}.png" for i in range(10)]
#: Three files per subject, named like slices of a study.
SLICES = [f"p{i // 3}_slice{i % 3}.nii.gz" for i in range(15)]


def test_the_split_is_a_known_answer():
    # fixed here so that a change of hash, salt or ranking (which would move results between runs
    # and machines) fails; sha256 over SPLIT_SALT is the same on every platform and Python version
    assert SPLIT_SALT == "ulmed.eval.split/v1"
    split = hash_split(CASES, SplitRule())
    assert split.test == ["images/case05.png", "images/case06.png"]
    assert split.train == [k for k in CASES if k not in split.test]
    assert split.record["subjects"] == {"train": 8, "test": 2} and split.record["items"] == {"train": 8, "test": 2}


def test_file_order_does_not_change_the_split():
    first = hash_split(SLICES, SplitRule(r"^(p\d+)_", 0.4))
    shuffled = SLICES[:]
    random.Random(3).shuffle(shuffled)
    again = hash_split(shuffled, SplitRule(r"^(p\d+)_", 0.4))
    assert set(again.test) == set(first.test) and set(again.train) == set(first.train)
    assert again.test == [k for k in shuffled if k in first.test]  # the lists keep the given order


def test_a_subject_stays_on_one_side():
    split = hash_split(SLICES, SplitRule(r"^(p\d+)_", 0.4))
    side = {}
    for key in SLICES:
        side.setdefault(key.split("_")[0], set()).add("test" if key in split.test else "train")
    assert all(len(s) == 1 for s in side.values())
    assert split.record["subjects"] == {"train": 3, "test": 2} and split.record["items"] == {"train": 9, "test": 6}
    whole = hash_split(SLICES, SplitRule(r"p\d+"))  # no group: the whole match is the subject
    assert whole.record["subjects"]["train"] + whole.record["subjects"]["test"] == 5


def test_subjects_from_stems(caplog):
    assert file_stem("a/b/case_012_t1.nii.gz") == "case_012_t1" and file_stem("x/y.PNG") == "y"
    assert subject_of("a/case_012_t1.nii.gz", None) == "case_012_t1"
    assert subject_of("a/case_012_t1.nii.gz", re.compile(r"case_(\d+)")) == "012"
    assert subject_of("a/scan.png", re.compile(r"case_(\d+)")) is None
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        split = hash_split([*SLICES, "other.png"], SplitRule(r"^(p\d+)_"))
    assert split.record["unmatched"] == 1 and "1 file name(s) do not match" in caplog.text
    assert "other" not in caplog.text  # counts, not names, in the log


def test_at_least_one_subject_on_each_side():
    two = hash_split(["a.png", "b.png"], SplitRule(test_fraction=0.01))
    assert len(two.test) == 1 and len(two.train) == 1
    assert len(hash_split(["a.png", "b.png", "c.png"], SplitRule(test_fraction=0.99)).train) == 1
    with pytest.raises(InputError, match="at least 2 subjects"):
        hash_split(SLICES, SplitRule(r"(slice)"))  # a constant, not the patient


def test_rules_are_validated():
    for kw, words in [({"subject": "("}, "regular expression"), ({"test_fraction": 0}, "between 0 and 1"),
                      ({"test_fraction": 1.5}, "between 0 and 1"), ({"test_fraction": "0.2"}, "between 0 and 1")]:
        with pytest.raises(ConfigError, match=words):
            SplitRule(**kw)
    assert SplitRule(test_fraction=1 / 4).to_dict()["test_fraction"] == 0.25


def test_split_json_is_written_reused_and_replaced(tmp_path, caplog):
    rule = SplitRule(r"^(p\d+)_", 0.4)
    split = resolve_split(SLICES, rule, tmp_path)
    path = tmp_path / SPLIT_FILE
    saved = json.loads(path.read_text())
    assert saved["train"] == split.train and saved["test"] == split.test and saved["rule"] == rule.to_dict()
    text = path.read_text()
    for subject in {k.split("_")[0] for k in SLICES}:  # no hash of a subject is written
        assert hashlib.sha256(f"{SPLIT_SALT}\0{subject}".encode()).hexdigest() not in text
    before = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ulmed"):
        again = resolve_split(list(reversed(SLICES)), rule, tmp_path)
    assert set(again.test) == set(split.test) and path.stat().st_mtime_ns == before and "reusing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        other = resolve_split(SLICES, SplitRule(test_fraction=0.5), tmp_path)
    assert "another split rule" in caplog.text
    assert json.loads(path.read_text())["test"] == other.test and len(other.test) == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        resolve_split(SLICES[:-3], SplitRule(test_fraction=0.5), tmp_path)
    assert "other items" in caplog.text


def test_the_fixed_split_of_an_index():
    split = fixed_split({"a.png": "train", "b.png": "val", "c.png": "test", "d.png": "train"})
    assert split.train == ["a.png", "d.png"] and split.test == ["c.png"]
    assert split.record["source"] == "index.csv" and split.record["unused"] == 1
    with pytest.raises(InputError, match="needs both"):
        fixed_split({"a.png": "train"})
