"""The benchmark data sets, read through the same loaders as any data set ``ulmed evaluate`` takes.

The package has no loaders of named data sets: HC18 (images + masks) and MSD hippocampus
(NIfTI + labels) are folders like any other, with an ``index.csv`` whose ``split`` column fixes
the split. :func:`load_hc18` and :func:`load_hippocampus` give one split of them as arrays
(:func:`ulmed.eval.data.load_split`), with the preprocessing the results were made with.

PneumoniaMNIST comes as one ``.npz``; :func:`pneumonia_folder` writes it out as a data set
folder (``images/<split>/<index>.png``, ``labels.csv`` for ``ulmed protect --labels`` and
``ulmed evaluate --labels``, and ``index.csv`` with the re-split's fixed ``split`` column), which
``ulmed protect`` and ``ulmed evaluate`` then read like any data set.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PNEUMONIA_NPZ = SHARED / "pneumoniamnist" / "pneumoniamnist.npz"
PNEUMONIA_CLASSES = ("normal", "pneumonia")


def load_hc18(
    root: Path, split: str, size: Sequence[int] = (128, 128), limit: int | None = None, keep_aspect: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split of an HC18-like folder: images ``(N, 1, H, W)`` letterboxed to ``size``, masks {0, 1}, keys."""
    from ulmed.eval.data import load_split
    from ulmed.eval.loading import Preprocess

    return load_split(root, split, preprocess=Preprocess(size=size, keep_aspect=keep_aspect), limit=limit)


def load_hippocampus(
    root: Path, split: str, shape: Sequence[int] = (40, 56, 40), limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split of the MSD hippocampus folder: volumes ``(N, 1, *shape)`` (min/max, pad/crop), labels 0-2, keys."""
    from ulmed.eval.data import load_split
    from ulmed.eval.loading import Preprocess

    return load_split(root, split, preprocess=Preprocess(shape=shape), limit=limit)


def spread(n: int, limit: int | None) -> np.ndarray:
    """``limit`` evenly spaced indices of ``range(n)`` (all for None): a class-ordered split keeps both classes."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def pneumonia_folder(
    dst: Path, npz: Path = PNEUMONIA_NPZ, limits: Mapping[str, int | None] | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> Path:
    """Write the PneumoniaMNIST ``.npz`` as a data set folder of 28 x 28 grey PNGs.

    Args:
        dst: The folder to write (``images/<split>/<index>.png``, ``labels.csv``, ``index.csv``).
        npz: The ``.npz`` with ``<split>_images`` / ``<split>_labels`` arrays.
        limits: Split -> at most this many images, evenly spread (the splits are ordered by class).
        splits: The splits to write.

    Returns:
        ``dst``.
    """
    from PIL import Image

    rows: list[dict[str, str]] = []
    with np.load(npz) as data:
        for split in splits:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
            (dst / "images" / split).mkdir(parents=True, exist_ok=True)
            for i in spread(len(images), (limits or {}).get(split)):
                key = f"images/{split}/{i:05d}.png"
                Image.fromarray(images[i]).save(dst / key)
                rows.append({"image": key, "label": str(int(labels[i])), "split": split})
    _write_csv(dst / "labels.csv", [{"image": r["image"], "label": r["label"]} for r in rows])
    _write_csv(dst / "index.csv", rows)
    return dst


__all__ = ["PNEUMONIA_CLASSES", "PNEUMONIA_NPZ", "load_hc18", "load_hippocampus", "pneumonia_folder", "spread"]
