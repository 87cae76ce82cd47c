"""The train/test split of an evaluation: by subject, from a stable hash, or the fixed one of ``index.csv``.

A data set without a fixed split is split by *subject*, so that two files of one patient
never fall on both sides (a victim tested on a subject it trained on looks better than it is):

* the subject of a file is taken from its file name stem (``a/b/case_012_t1.nii.gz`` ->
  ``case_012_t1``) by the :class:`SplitRule`'s regular expression: group 1 when the
  expression has a group, else the whole match; without an expression the whole stem; a stem
  it does not match is its own subject (and counted);
* the subjects are ranked by ``sha256(SPLIT_SALT + "\\0" + subject)`` -- the same on every
  machine and Python version, and independent of the order the files were found in -- and the
  first ``round(test_fraction * subjects)`` (at least 1, at most all but one) go to test.

The hashes and subjects are never written or logged (file names may hold patient IDs); the
record of a split holds the rule and counts only. The lists of train and test items (relative
paths in the user's own data set) go to ``split.json`` in the evaluation's output folder
(:data:`SPLIT_FILE`); a rerun with the same rule on the same items reuses it, a different rule
makes a new split with a warning.

A data set whose ``index.csv`` has a ``split`` column keeps that fixed split (the benchmarks
compare across runs on it): rows marked ``train`` and ``test`` are used, others (``val``) not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulmed.errors import ConfigError, InputError
from ulmed.io.atomic import atomic_write_json

log = logging.getLogger("ulmed")

#: The salt of the subject hash: fixed, so a split is the same everywhere; a new value means a new rule.
SPLIT_SALT = "ulmed.eval.split/v1"
#: The share of subjects that goes to test by default.
DEFAULT_TEST_FRACTION = 0.2
#: The file, in the evaluation's output folder, that lists the train and test items.
SPLIT_FILE = "split.json"
TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class SplitRule:
    """How a data set without a fixed split is split (validated on construction).

    Args:
        subject: Regular expression over the file name stem that finds the subject (group 1
            when it has a group, else the whole match); None: the whole stem.
        test_fraction: Share of the subjects that goes to test, in (0, 1).
    """

    subject: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION

    def __post_init__(self) -> None:
        if self.subject is not None:
            try:
                re.compile(self.subject)
            except (re.error, TypeError) as exc:
                raise ConfigError(f"--subject {self.subject!r} is not a regular expression ({exc})") from None
        fraction = self.test_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"test fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")
        object.__setattr__(self, "test_fraction", float(fraction))

    def to_dict(self) -> dict[str, Any]:
        """The rule as recorded in ``split.json`` and the report (no subject, no hash)."""
        return {"method": "subject-hash", "subject": self.subject, "test_fraction": self.test_fraction,
                "hash": "sha256", "salt": SPLIT_SALT}


@dataclass
class Split:
    """The train and test items of an evaluation and how they were chosen.

    Args:
        train: Keys (relative paths) of the train items.
        test: Keys of the test items.
        record: What the report and ``split.json`` say about it: ``source`` (``subject-hash``
            or ``index.csv``), the rule, and counts of items (and subjects) per split.
    """

    train: list[str]
    test: list[str]
    record: dict[str, Any] = field(default_factory=dict)


def file_stem(key: str) -> str:
    """The file name without its suffix (``.nii.gz`` counts as one)."""
    name = Path(key).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def subject_of(key: str, pattern: re.Pattern[str] | None) -> str | None:
    """The subject of an item: the pattern's group 1 (or whole match) in its stem; None when it does not match."""
    stem = file_stem(key)
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if match is None:
        return None
    value = match.group(1) if pattern.groups else match.group(0)
    return value if value else None


def _rank(subject: str) -> bytes:
    return hashlib.sha256(f"{SPLIT_SALT}\0{subject}".encode()).digest()


def hash_split(keys: Sequence[str], rule: SplitRule) -> Split:
    """Split ``keys`` by subject (see the module docstring); the lists keep the order of ``keys``.

    Raises:
        InputError: Fewer than two subjects (nothing to test on, or nothing to train on).
    """
    pattern = re.compile(rule.subject) if rule.subject is not None else None
    subjects: dict[str, str] = {}
    unmatched = 0
    for key in keys:
        subject = subject_of(key, pattern)
        if subject is None:
            unmatched += 1
            subject = file_stem(key)
        subjects[key] = subject
    distinct = sorted(set(subjects.values()), key=_rank)
    if len(distinct) < 2:
        raise InputError(f"{len(keys)} item(s) of {len(distinct)} subject(s): a train/test split needs at least "
                         "2 subjects; check --subject (it should find the patient, not a constant)")
    if unmatched:
        log.warning("%d file name(s) do not match --subject %r; each is taken as its own subject",
                    unmatched, rule.subject)
    n_test = min(len(distinct) - 1, max(1, round(rule.test_fraction * len(distinct))))
    test_subjects = set(distinct[:n_test])
    test = [k for k in keys if subjects[k] in test_subjects]
    train = [k for k in keys if subjects[k] not in test_subjects]
    record = {"source": "subject-hash", "rule": rule.to_dict(),
              "subjects": {TRAIN: len(distinct) - n_test, TEST: n_test},
              "items": {TRAIN: len(train), TEST: len(test)}, "unmatched": unmatched}
    return Split(train, test, record)


def fixed_split(splits: Mapping[str, str]) -> Split:
    """The fixed split of an ``index.csv``: key -> its ``split`` value (``train``, ``test``; others unused).

    Raises:
        InputError: No train or no test rows.
    """
    train = [k for k, s in splits.items() if s == TRAIN]
    test = [k for k, s in splits.items() if s == TEST]
    if not train or not test:
        raise InputError(f"index.csv has {len(train)} train and {len(test)} test row(s); the split column "
                         "needs both (or remove the column to split by subject)")
    record = {"source": "index.csv", "rule": {"method": "fixed", "column": "split"},
              "items": {TRAIN: len(train), TEST: len(test)}, "unused": len(splits) - len(train) - len(test)}
    return Split(train, test, record)


def _saved(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; writing a new split", path)
        return None
    return saved if isinstance(saved, dict) else None


def _reused(saved: dict[str, Any] | None, split: Split, path: Path) -> bool:
    """Whether ``split.json`` holds this split (warn when it holds another)."""
    if saved is None:
        return False
    if saved.get("rule") != split.record["rule"]:
        log.warning("%s was made with another split rule (%s); splitting by the new rule (%s)",
                    path, json.dumps(saved.get("rule")), json.dumps(split.record["rule"]))
        return False
    old = {TRAIN: set(saved.get(TRAIN, ())), TEST: set(saved.get(TEST, ()))}
    if old != {TRAIN: set(split.train), TEST: set(split.test)}:
        log.warning("%s lists other items than the data set now holds (files added or removed); "
                    "writing the new split", path)
        return False
    return True


def resolve_split(keys: Sequence[str], rule: SplitRule, out: Path | None,
                  fixed: Mapping[str, str] | None = None) -> Split:
    """The split of an evaluation, written to (or reused from) ``out/split.json``.

    Args:
        keys: Every item's key (relative path), in a stable order.
        rule: How to split when there is no fixed split.
        out: The evaluation's output folder (None: nothing is written).
        fixed: Key -> split from ``index.csv``; when given, that fixed split is used.

    Returns:
        The :class:`Split` (the same whether ``split.json`` held it already or not).
    """
    split = fixed_split(fixed) if fixed is not None else hash_split(keys, rule)
    if out is None:
        return split
    path = Path(out) / SPLIT_FILE
    if _reused(_saved(path), split, path):
        log.info("split: reusing %s (%d train, %d test items)", path, len(split.train), len(split.test))
    else:
        atomic_write_json(path, {"ulmed_split": 1, **split.record, TRAIN: split.train, TEST: split.test})
    return split
