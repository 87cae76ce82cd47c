"""The clean data of an evaluation: any data set ``ulmed protect`` takes, split and loaded for the victims.

:func:`load_eval_data` puts the steps together: find the items (:mod:`ulmed.eval.folders`),
split them by subject or by ``index.csv`` (:mod:`ulmed.eval.split`, written to
``split.json``), and load the train and test arrays (:mod:`ulmed.eval.loading`). The
result, :class:`EvalData`, keeps the items' files, so that

* :func:`reload_eval_data` loads the same items again at another size, kernel, shape or
  spacing (a defense cell whose trainer works on another grid: ``resize:N``,
  ``resample:X,Y,Z``);
* :func:`load_protected` reads a protected copy of the train items (same relative paths, or
  the ``.png`` name ulmed writes JPEG inputs under) through the same preprocessing, so that
  it can replace the clean train split; targets always come from the clean set (masks are
  never perturbed);
* a victim that needs the native files (nnU-Net) finds them in :attr:`EvalData.train_items`
  / :attr:`EvalData.test_items` (or the ``*_image_paths`` / ``*_target_paths`` lists).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import InputError
from ulmed.eval.folders import EvalFolder, EvalItem, find_eval_items, warn_skipped
from ulmed.eval.loading import Preprocess, image_channels, load_images, load_items
from ulmed.eval.split import SplitRule, resolve_split
from ulmed.io.kinds import output_relpath

log = logging.getLogger("ulmed")


@dataclass
class EvalData:
    """The clean train and test splits of one data set, preprocessed for the victims.

    Args:
        root: The clean data set folder.
        task: ``segmentation`` or ``classification``.
        spatial_dims: 2 (images) or 3 (volumes).
        num_classes: Classes including background (segmentation), or the number of classes.
        preprocess: How the arrays were made (:class:`~ulmed.eval.loading.Preprocess`).
        channels: Image channels (1 grey, 3 colour).
        split: The split's record: source, rule and counts (:class:`~ulmed.eval.split.Split`).
        train_items: The train items loaded (key, image file, target file or class index).
        test_items: The test items loaded.
        train_images: ``(N, C, *spatial)`` float32 in [0, 1].
        train_targets: Label maps ``(N, *spatial)`` or class indices ``(N,)``, int64.
        test_images: Clean test images.
        test_targets: Test targets.
        classes: Class names by index (classification), else None.
        skipped: ``(relative path, reason)`` of the files left out.
    """

    root: Path
    task: str
    spatial_dims: int
    num_classes: int
    preprocess: Preprocess
    channels: int
    split: dict[str, Any]
    train_items: list[EvalItem]
    test_items: list[EvalItem]
    train_images: np.ndarray
    train_targets: np.ndarray
    test_images: np.ndarray
    test_targets: np.ndarray
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        """The kind of data set: ``2d-segmentation``, ``3d-segmentation``, ``2d-classification`` ..."""
        return f"{self.spatial_dims}d-{self.task}"

    @property
    def loader_kwargs(self) -> dict[str, Any]:
        """The preprocessing settings that apply here (the report's ``loader``)."""
        return self.preprocess.record(self.spatial_dims)

    @property
    def train_keys(self) -> list[str]:
        """Relative paths of the train images."""
        return [item.key for item in self.train_items]

    @property
    def test_keys(self) -> list[str]:
        """Relative paths of the test images."""
        return [item.key for item in self.test_items]

    @property
    def train_image_paths(self) -> list[Path]:
        """The train images' files."""
        return [item.image for item in self.train_items]

    @property
    def train_target_paths(self) -> list[Path | None]:
        """The train masks/label maps' files (None for classification)."""
        return [item.target for item in self.train_items]

    @property
    def test_image_paths(self) -> list[Path]:
        """The test images' files."""
        return [item.image for item in self.test_items]

    @property
    def test_target_paths(self) -> list[Path | None]:
        """The test masks/label maps' files (None for classification)."""
        return [item.target for item in self.test_items]

    def record(self) -> dict[str, Any]:
        """What the report says about the data besides its split: kind, channels, classes and skipped files."""
        return {"kind": self.dataset, "spatial_dims": self.spatial_dims, "channels": self.channels,
                "classes": self.classes, "skipped": [{"path": rel, "reason": reason} for rel, reason in self.skipped]}


def _channels(folder: EvalFolder) -> int:
    """3 when every 2D image is colour, else 1."""
    if folder.spatial_dims != 2:
        return 1
    return 3 if all(image_channels(item.image) == 3 for item in folder.items) else 1


def _num_classes(task: str, classes: Sequence[str] | None, *targets: np.ndarray) -> int:
    if task == "classification":
        return max(2, len(classes or ()))
    return max(2, int(max(t.max() for t in targets)) + 1)


def load_eval_data(
    root: str | Path,
    *,
    masks: str | Path | None = None,
    labels: str | Path | None = None,
    rule: SplitRule | None = None,
    out: str | Path | None = None,
    preprocess: Preprocess | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> EvalData:
    """Find, split and load the clean data set in ``root``.

    Args:
        root: The clean data set folder (see :mod:`ulmed.eval.folders` for its layouts).
        masks: Masks/label maps folder at the images' relative paths (segmentation).
        labels: Labels CSV (classification).
        rule: How to split without a fixed ``index.csv`` split; default ``SplitRule()``
            (whole stem as subject, 20 % test).
        out: The evaluation's output folder: ``split.json`` is written (or reused) there.
        preprocess: Sizes and kernels; default ``Preprocess()``.
        train_limit: At most this many train items (the first readable ones of the split).
        test_limit: At most this many test items.

    Returns:
        The :class:`EvalData`.

    Raises:
        InputError: No folder, nothing to evaluate, fewer than two subjects, or a split
            left empty by unreadable files.
    """
    prep = preprocess or Preprocess()
    folder = find_eval_items(root, masks, labels)
    by_key = {item.key: item for item in folder.items}
    rule = rule or SplitRule()
    if folder.fixed is not None and rule != SplitRule():
        log.warning("index.csv fixes the split; --subject and --test-fraction are not used")
    split = resolve_split(list(by_key), rule, Path(out) if out is not None else None, folder.fixed)
    channels = _channels(folder)
    loaded = {}
    skipped = list(folder.skipped)
    for name, keys, limit in (("train", split.train, train_limit), ("test", split.test, test_limit)):
        try:
            images, targets, kept, bad = load_items([by_key[k] for k in keys], prep, folder.spatial_dims, channels,
                                                    limit)
        except InputError as exc:
            raise InputError(f"the {name} split has no readable item: {exc}", folder.root) from None
        warn_skipped(bad)
        skipped += bad
        loaded[name] = (images, targets, kept)
    (tr_x, tr_y, tr_items), (te_x, te_y, te_items) = loaded["train"], loaded["test"]
    num_classes = _num_classes(folder.task, folder.classes, tr_y, te_y)
    return EvalData(folder.root, folder.task, folder.spatial_dims, num_classes, prep, channels, split.record,
                    tr_items, te_items, tr_x, tr_y, te_x, te_y, folder.classes, skipped)


def reload_eval_data(data: EvalData, **changes: Any) -> EvalData:
    """The same train and test items loaded again with other preprocessing (for defense cells on another grid).

    Args:
        data: Data from :func:`load_eval_data`.
        **changes: Fields of :class:`~ulmed.eval.loading.Preprocess` to change: ``size``,
            ``keep_aspect``, ``kernel``, ``shape``, ``spacing`` (e.g. ``size=(128, 128)`` for
            a ``resize:128`` cell, ``spacing=(1.0, 1.0, 1.0)`` for ``resample:1,1,1``).

    Returns:
        A new :class:`EvalData` with the same items, split record, classes and
        ``num_classes``; only the arrays and ``preprocess`` differ.

    Raises:
        ConfigError: An unknown field or a bad value.
        InputError: A file that loaded before cannot be read now.
    """
    prep = replace(data.preprocess, **changes)
    arrays = {}
    for name, items in (("train", data.train_items), ("test", data.test_items)):
        images, targets, kept, bad = load_items(items, prep, data.spatial_dims, data.channels)
        if bad:
            key, reason = bad[0]
            raise InputError(f"cannot be read again ({reason})", data.root / key)
        arrays[name] = (images, targets)
    return replace(data, preprocess=prep, train_images=arrays["train"][0], train_targets=arrays["train"][1],
                   test_images=arrays["test"][0], test_targets=arrays["test"][1])


def protected_file(root: Path, key: str) -> Path:
    """The protected copy of the item ``key`` under ``root``: the same relative path, or ulmed's ``.png`` name.

    Raises:
        InputError: Neither exists.
    """
    path = root / key
    if not path.is_file() and (root / output_relpath(Path(key))).is_file():
        path = root / output_relpath(Path(key))
    if not path.is_file():
        raise InputError("protected copy of this item not found; is the protected path the ulmed protect output?", path)
    return path


def load_protected(data: EvalData, protected_root: str | Path) -> np.ndarray:
    """The train images of a protected copy, preprocessed exactly like ``data.train_images``.

    Args:
        data: The clean data (its train keys and preprocessing; use :func:`reload_eval_data`
            first for another grid).
        protected_root: Root of the protected copy (``ulmed protect -o``).

    Returns:
        Images ``(N, C, *spatial)`` float32 in [0, 1], in the order of ``data.train_items``.

    Raises:
        InputError: The copy or one of its train items is missing or unreadable.
    """
    root = Path(protected_root).expanduser()
    if not root.is_dir():
        raise InputError("protected copy not found (it must be the folder ulmed protect wrote)", root)
    paths = [protected_file(root, key) for key in data.train_keys]
    return load_images(paths, data.preprocess, data.spatial_dims, data.channels)


def load_split(
    root: str | Path,
    split: str,
    *,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    masks: str | Path | None = None,
    labels: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The arrays of one fixed split (``train``, ``val``, ``test`` ...) of a folder's ``index.csv``.

    For scripts and tests that work on one split of a benchmark set without an evaluation;
    unreadable items are skipped with a warning, as :func:`load_eval_data` does.

    Returns:
        Images ``(N, C, *spatial)`` float32 in [0, 1], targets int64, and the keys.

    Raises:
        InputError: The folder has no fixed split, or no readable item in ``split``.
    """
    folder = find_eval_items(root, masks, labels)
    if folder.fixed is None:
        raise InputError("no index.csv with a split column here; use load_eval_data to split by subject", folder.root)
    items = [item for item in folder.items if folder.fixed[item.key] == split]
    if not items:
        raise InputError(f"no rows with split {split!r} in index.csv", folder.root)
    images, targets, kept, bad = load_items(items, preprocess or Preprocess(), folder.spatial_dims, _channels(folder),
                                            limit)
    warn_skipped(bad)
    return images, targets, [item.key for item in kept]
