"""Shared fixtures: paths to the real data sets used by the tests."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """tests/data: small real subsets of HC18, MSD hippocampus, PneumoniaMNIST and MONAI's tiny volume.

    Laid out as the benchmark data (same folders, same index.csv columns), so a test reads them
    the way a benchmark reads the full sets; see tests/data/README.md for sources and licences.
    """
    return TEST_DATA


#: The key salt the tests run under (:mod:`ulmed.pipeline.salt`).
KEY_SALT = "tests-key-salt-0123456789abcdef"


@pytest.fixture(scope="session", autouse=True)
def _one_key_salt() -> Iterator[None]:
    """Run every test under one ``$ULMED_KEY_SALT``, as a user who wants reproducible output does.

    DICOM series keys (which seed the noise) are keyed by the run's salt, so runs into two
    folders come out byte-identical only under one salt. Tests of the default (a random salt
    kept in ``.ulmed/secret``) delete the variable.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ULMED_KEY_SALT", KEY_SALT)
        yield


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI reconfigures the root logger (basicConfig force=True, on a captured stderr that
    pytest closes after the test); put the root logger back after every test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The project's sample_data/ folder."""
    return SAMPLE_DATA


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def hc18_train_records(real_data):
    """A factory: the first ``n`` HC18 train images as 8-bit records with their masks, at ``size`` px."""
    import csv

    import numpy as np
    from PIL import Image

    from ulmed.io.record import IntensityMapping, Record

    def make(size: int, n: int = 8) -> list[Record]:
        rows = [r for r in csv.DictReader(open(real_data / "hc18/index.csv")) if r["split"] == "train"][:n]
        recs = []
        for r in rows:
            img = np.asarray(Image.open(real_data / "hc18" / r["image"]).resize((size, size), Image.BILINEAR))[None]
            mask = np.asarray(Image.open(real_data / "hc18" / r["mask"]).resize((size, size), Image.NEAREST))
            recs.append(Record(r["image"], img, IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=mask))
        return recs

    return make


@pytest.fixture(scope="session")
def plain_folders(real_data, tmp_path_factory):
    """Data sets laid out as ``ulmed protect`` takes them, with no index.csv: what ``ulmed evaluate`` reads.

    ``seg2d``: 10 HC18 images in ``images/`` with their 0/255 masks in ``masks/``; ``seg3d``: the
    9 MSD hippocampus volumes in ``images/`` with ``labels/``; ``cls``: 24 PneumoniaMNIST PNGs
    (evenly spread over the class-ordered train split) named ``pt<NN>_v<K>.png``, two views of
    one "patient" of the same class, with ``labels.csv`` giving class names (``normal``,
    ``pneumonia``).
    """
    import csv
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("plain")
    for name, src, targets, n in (("seg2d", "hc18", "masks", 10), ("seg3d", "msd_hippocampus", "labels", 9)):
        for sub in ("images", targets):
            (root / name / sub).mkdir(parents=True)
            for f in sorted((real_data / src / sub).iterdir())[:n]:
                shutil.copy(f, root / name / sub / f.name)
    (root / "cls").mkdir()
    with np.load(real_data / "pneumoniamnist" / "pneumoniamnist.npz") as npz:
        labels = npz["train_labels"].reshape(-1)
        order = np.argsort(labels, kind="stable")
        pick = order[np.linspace(0, len(order) - 1, 24).round().astype(int)]
        images = npz["train_images"][pick]
    rows = []
    for i, (image, label) in enumerate(zip(images, labels[pick])):
        name = f"pt{i // 2:02d}_v{i % 2}.png"
        Image.fromarray(image).save(root / "cls" / name)
        rows.append({"image": name, "label": ("normal", "pneumonia")[int(label)]})
    with open(root / "cls" / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return {name: root / name for name in ("seg2d", "seg3d", "cls")}
