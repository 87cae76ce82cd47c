"""nnU-Net's raw data set layout, written from (image, label) pairs.

:func:`write_raw_dataset` writes ``Dataset<ID>_<Name>/`` as nnU-Net v2 expects it::

    imagesTr/case_0000_0000.<ext>   labelsTr/case_0000.<ext>   dataset.json
    imagesTs/case_0000_0000.<ext>   labelsTs/case_0000.<ext>   (the test cases, for prediction and scoring)

Case names are indices in the order given, never the original file names (those may hold
patient IDs). ``dataset.json`` holds ``channel_names``, ``labels``, ``numTraining`` and
``file_ending``: ``.png`` for 2D data (nnU-Net's natural-image reader), ``.nii.gz`` for volumes
(its SimpleITK reader, geometry kept). See :mod:`ulmed.eval.nnunet.convert` for what each file
becomes.

Labels: the label values present in the train and test label maps define the classes. They are
sorted and numbered 0..K with 0 kept as background, so a 0/255 mask becomes 0/1 and a 0/1/2
label map stays 0/1/2; ``labels`` names class ``k`` after its stored value (``label_255``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.eval.nnunet.convert import (
    MAX_LABELS,
    copy_volume,
    map_labels,
    read_image_2d,
    read_labels,
    volume_geometry,
    write_label_volume,
    write_png,
)
from ulmed.io.atomic import atomic_write_json

#: nnU-Net's numbers from 500 up are free for one's own data sets; each run has its own raw folder.
DEFAULT_ID = 501
DEFAULT_NAME = "ulmed"
FILE_ENDINGS = {2: ".png", 3: ".nii.gz"}
_NAME = re.compile(r"^[A-Za-z0-9-]+$")

Case = tuple[Path, Path]


@dataclass(frozen=True)
class RawDataset:
    """A raw nnU-Net data set as written.

    Args:
        root: The ``Dataset<ID>_<Name>`` folder.
        dataset_id: nnU-Net's data set number.
        spatial_dims: 2 or 3.
        file_ending: ``.png`` or ``.nii.gz``.
        labels: nnU-Net's labels dict (name -> label 0..K).
        label_values: Stored label value -> nnU-Net label.
        channels: Image channels (1 grey, 3 RGB).
        n_train: Train cases.
        test_images: ``imagesTs`` files, in the order of the test cases.
        test_labels: ``labelsTs`` files (mapped to 0..K), same order.
    """

    root: Path
    dataset_id: int
    spatial_dims: int
    file_ending: str
    labels: dict[str, int]
    label_values: dict[int, int]
    channels: int
    n_train: int
    test_images: tuple[Path, ...]
    test_labels: tuple[Path, ...]

    @property
    def num_classes(self) -> int:
        """Classes, background included."""
        return len(self.labels)


def check_cases(cases: Sequence[tuple[Any, Any]], split: str) -> list[Case]:
    """``cases`` as (image, label) paths; ConfigError for anything else."""
    out = []
    for i, case in enumerate(cases):
        if not isinstance(case, (tuple, list)) or len(case) != 2:
            raise ConfigError(f"{split} case {i} must be an (image, label) pair of paths, got {case!r}")
        out.append((Path(case[0]), Path(case[1])))
    return out


def _scan(cases: Sequence[Case], spatial_dims: int) -> tuple[set[int], bool]:
    """Label values present in all label maps, and whether any 2D image has colour."""
    values: set[int] = set()
    colour = False
    for image, label in cases:
        if spatial_dims == 2:
            pixels = read_image_2d(image)
            shape: tuple[int, ...] = pixels.shape[:2]
            colour = colour or pixels.ndim == 3
        else:
            shape = volume_geometry(image)[0]
        found = np.unique(read_labels(label, image, shape))
        if found.size and found[0] < 0:
            raise InputError(f"label map has negative values ({int(found[0])}); labels must be 0, 1, 2, ...", label)
        values.update(int(v) for v in found)
    return values, colour


def label_table(values: set[int]) -> dict[int, int]:
    """Stored label value -> nnU-Net label: sorted, numbered 0..K, with 0 as background.

    Raises:
        InputError: More values than uint8 label files hold (a resized mask with interpolated values?).
    """
    ordered = sorted(set(values) | {0})
    if len(ordered) > MAX_LABELS:
        raise InputError(f"the label maps hold {len(ordered)} different values, more than nnU-Net's uint8 labels "
                         "take; are they label maps? (resize masks with nearest-neighbour, not interpolation)")
    return {v: i for i, v in enumerate(ordered)}


def _write_case(case: Case, dst: tuple[Path, Path], spatial_dims: int, lut: dict[int, int], colour: bool) -> None:
    image, label = case
    if spatial_dims == 2:
        pixels = read_image_2d(image)
        if colour and pixels.ndim == 2:
            grey = pixels if pixels.dtype == np.uint8 else np.rint(pixels / max(1.0, pixels.max() / 255.0))
            pixels = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        write_png(pixels, dst[0])
        write_png(map_labels(read_labels(label, image, pixels.shape[:2]), lut, label), dst[1])
    else:
        labels = map_labels(read_labels(label, image, volume_geometry(image)[0]), lut, label)
        copy_volume(image, dst[0])
        write_label_volume(labels, label, image, dst[1])


def _dataset_json(spatial_dims: int, lut: dict[int, int], colour: bool, n_train: int) -> dict[str, Any]:
    channels = {"0": "R", "1": "G", "2": "B"} if colour else {"0": "image"}
    labels = {("background" if v == 0 else f"label_{v}"): k for v, k in lut.items()}
    return {
        "channel_names": channels,
        "labels": labels,
        "numTraining": n_train,
        "file_ending": FILE_ENDINGS[spatial_dims],
        "description": "written by ulmed (ulmed.eval.nnunet); case names are indices, not the original file names",
        "ulmed_label_values": {str(v): k for v, k in lut.items()},
    }


def _check_target(raw_root: Path, dataset_id: int, name: str) -> Path:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConfigError(f"nnU-Net data set id must be an integer 1..999, got {dataset_id!r}")
    if not _NAME.match(name):
        raise ConfigError(f"nnU-Net data set name {name!r} may hold only letters, digits and '-'")
    root = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    if root.exists() and any(root.iterdir()):
        raise OutputError("nnU-Net raw data set folder exists and is not empty; remove it or use another folder", root)
    return root


def write_raw_dataset(
    train: Sequence[tuple[Any, Any]],
    test: Sequence[tuple[Any, Any]],
    raw_root: str | Path,
    *,
    spatial_dims: int,
    dataset_id: int = DEFAULT_ID,
    name: str = DEFAULT_NAME,
) -> RawDataset:
    """Write train (and test) cases as one nnU-Net raw data set; the inputs are only read.

    Args:
        train: (image, label) paths: 2D PNG/TIFF/JPEG/BMP images with masks, or NIfTI volumes
            with label maps.
        test: Test cases, written to ``imagesTs``/``labelsTs`` (may be empty).
        raw_root: The ``nnUNet_raw`` folder.
        spatial_dims: 2 or 3.
        dataset_id: nnU-Net's data set number (1..999).
        name: Data set name (letters, digits, '-').

    Returns:
        The :class:`RawDataset`.

    Raises:
        ConfigError: Bad ``spatial_dims``, id, name or case list.
        InputError: A file is missing or unusable (it is named).
        OutputError: The data set folder exists and is not empty.
    """
    if spatial_dims not in FILE_ENDINGS:
        raise ConfigError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    train_cases, test_cases = check_cases(train, "train"), check_cases(test, "test")
    if not train_cases:
        raise ConfigError("no train cases given; nnU-Net needs at least one (image, label) pair")
    root = _check_target(Path(raw_root), dataset_id, name)
    values, colour = _scan([*train_cases, *test_cases], spatial_dims)
    lut = label_table(values)
    ending = FILE_ENDINGS[spatial_dims]
    for i, case in enumerate(train_cases):
        dst = (root / "imagesTr" / f"case_{i:04d}_0000{ending}", root / "labelsTr" / f"case_{i:04d}{ending}")
        _write_case(case, dst, spatial_dims, lut, colour)
    test_files = [(root / "imagesTs" / f"case_{i:04d}_0000{ending}", root / "labelsTs" / f"case_{i:04d}{ending}")
                  for i in range(len(test_cases))]
    for case, dst in zip(test_cases, test_files):
        _write_case(case, dst, spatial_dims, lut, colour)
    meta = _dataset_json(spatial_dims, lut, colour, len(train_cases))
    atomic_write_json(root / "dataset.json", meta)
    return RawDataset(root, dataset_id, spatial_dims, ending, meta["labels"], lut, 3 if colour else 1,
                      len(train_cases), tuple(f[0] for f in test_files), tuple(f[1] for f in test_files))
