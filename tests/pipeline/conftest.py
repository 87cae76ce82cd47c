"""Fixtures of the pipeline tests: a small real HC18 data set (images/ + masks/ + index.csv)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

SUBJECTS = ("012_HC", "015_HC", "017_HC", "018_HC")


def _hc18_subset(real_data: Path, dst: Path) -> Path:
    """A small HC18 data set: 4 images, their masks and the matching rows of the split file."""
    src = real_data / "hc18"
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
        for s in SUBJECTS:
            shutil.copy2(src / sub / f"{s}.png", dst / sub / f"{s}.png")
    with open(src / "index.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [rows[0]] + [r for r in rows[1:] if Path(r[0]).stem in SUBJECTS]
    assert len(keep) == len(SUBJECTS) + 1
    with open(dst / "index.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(keep)
    return dst


@pytest.fixture(scope="module")
def dataset(real_data, tmp_path_factory) -> Path:
    return _hc18_subset(real_data, tmp_path_factory.mktemp("in") / "hc18")
