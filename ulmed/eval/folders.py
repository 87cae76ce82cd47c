"""What a clean data set folder holds for an evaluation: its items, their targets and task.

The conventions are those of ``ulmed protect`` (:func:`ulmed.io.discover.discover`):

* 2D segmentation: images (PNG, TIFF, JPEG) under an ``images/`` folder with their masks at
  the same relative paths under a sibling ``masks/`` or ``labels/`` folder, or under a
  ``--masks`` folder;
* 3D segmentation: NIfTI volumes with their label maps found the same way
  (``imagesTr/`` + ``labelsTr/`` works too);
* classification: images with a labels CSV (``--labels FILE``; columns ``image``, the path
  relative to the data set folder, and ``label``). Labels may be integers or class names;
  they become indices 0..K-1 in sorted order (numbers by value), and the class names are
  recorded (:attr:`EvalFolder.classes`).

A folder whose ``index.csv`` has ``image`` and ``split`` columns is read from that index
instead: its rows in order, the target from a ``mask`` (or ``label``) column of file paths,
class labels from a ``label`` column of values, and the fixed split.

Files that cannot be used are skipped with a warning that names them: bad files, items of a
segmentation set without a mask, images missing from the labels file. Only when nothing is
left is it an error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ulmed.errors import InputError, os_reason
from ulmed.io.discover import Inventory, discover, find_target
from ulmed.io.kinds import is_nifti_path
from ulmed.io.labels import LABEL_COLUMNS, PATH_COLUMNS

log = logging.getLogger("ulmed")
INDEX_FILE = "index.csv"
SEGMENTATION, CLASSIFICATION = "segmentation", "classification"
#: How many skipped files are named one by one in the log (all of them go into the report).
MAX_WARNINGS = 10


@dataclass(frozen=True)
class EvalItem:
    """One item of the clean data set.

    Args:
        key: Path of the image relative to the data set folder (``/``-separated); a protected
            copy holds its protected image at the same relative path.
        image: The image file.
        target: Its mask or label map (segmentation); None for classification.
        label: Its class index (classification); None for segmentation.
    """

    key: str
    image: Path
    target: Path | None = None
    label: int | None = None


@dataclass
class EvalFolder:
    """The items of a clean data set and what they are for.

    Args:
        root: The data set folder.
        items: The usable items, in a stable order (index order, else sorted by path).
        task: ``segmentation`` or ``classification``.
        spatial_dims: 2 (images) or 3 (NIfTI volumes).
        classes: Class names by index (classification); None for segmentation.
        fixed: Key -> ``split`` value from ``index.csv``; None without a fixed split.
        skipped: ``(relative path, reason)`` of the files left out.
    """

    root: Path
    items: list[EvalItem]
    task: str
    spatial_dims: int
    classes: list[str] | None = None
    fixed: dict[str, str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``2d-segmentation``, ``3d-segmentation`` or ``2d-classification`` (``3d-`` for volumes)."""
        return f"{self.spatial_dims}d-{self.task}"


def warn_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    """Log one warning per skipped file (the first :data:`MAX_WARNINGS`), then how many more."""
    for rel, reason in skipped[:MAX_WARNINGS]:
        log.warning("skipped %s: %s", rel, reason)
    if len(skipped) > MAX_WARNINGS:
        log.warning("skipped %d more file(s); report.json lists them all", len(skipped) - MAX_WARNINGS)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _key(text: str) -> str:
    """A relative path as written in a CSV, normalised (``./a\\b.png`` -> ``a/b.png``)."""
    key = text.strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise InputError(f"cannot read the {what} ({reason})", path) from None


def _column(row: Mapping[str, str], names: Sequence[str]) -> str | None:
    header = {name.lower().strip(): name for name in row}
    return next((header[c] for c in names if c in header), None)


def read_class_labels(path: str | Path) -> dict[str, str]:
    """Key -> label text from a labels CSV (path column :data:`~ulmed.io.labels.PATH_COLUMNS`, label column
    :data:`~ulmed.io.labels.LABEL_COLUMNS`).

    Raises:
        InputError: Unreadable file, no rows, missing columns or an empty label.
    """
    path = Path(path)
    rows = _read_csv(path, "labels file; check --labels")
    if not rows:
        raise InputError("labels file has no rows; it needs a header and one row per image", path)
    path_col, label_col = _column(rows[0], PATH_COLUMNS), _column(rows[0], LABEL_COLUMNS)
    if path_col is None or label_col is None:
        raise InputError(f"labels file needs a path column ({'/'.join(PATH_COLUMNS)}) and a label column "
                         f"({'/'.join(LABEL_COLUMNS)})", path)
    labels: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        value = (row.get(label_col) or "").strip()
        if not value:
            raise InputError(f"line {line}: empty label; give every image a class", path)
        labels[_key(row.get(path_col) or "")] = value
    return labels


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def class_indices(labels: Mapping[str, str]) -> tuple[dict[str, int], list[str]]:
    """Label texts -> class indices 0..K-1 (integers in numeric order, else names in sorted order), and the names."""
    values = set(labels.values())
    numbers = {v: _as_int(v) for v in values}
    if all(n is not None for n in numbers.values()):
        classes = sorted(values, key=lambda v: numbers[v])  # type: ignore[arg-type, return-value]
    else:
        classes = sorted(values)
    index = {name: i for i, name in enumerate(classes)}
    return {key: index[value] for key, value in labels.items()}, classes


def _labels_path(labels: str | Path, root: Path) -> Path:
    path = Path(labels).expanduser()
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        return root / path
    if not path.is_file():
        raise InputError("labels file not found; check --labels", path)
    return path


def _classified(root: Path, candidates: Sequence[tuple[str, Path]], labels: str | Path,
                skipped: list[tuple[str, str]]) -> tuple[list[EvalItem], list[str]]:
    """The candidates (key, image) that have a label in the labels file, with their class indices."""
    path = Path(labels)
    raw = read_class_labels(path)
    known = {key for key, _ in candidates}
    skipped += [(key, "listed in the labels file but not found in the data set") for key in raw if key not in known]
    skipped += [(key, f"no label in {path.name}") for key, _ in candidates if key not in raw]
    used = {key: raw[key] for key, _ in candidates if key in raw}
    if not used:
        raise InputError(f"no image of the data set is in the labels file; its paths must be relative to {root}",
                         path)
    index, classes = class_indices(used)
    return [EvalItem(key, image, label=index[key]) for key, image in candidates if key in used], classes


def _one_dims(items: Sequence[EvalItem], root: Path) -> int:
    dims = {3 if is_nifti_path(item.image) else 2 for item in items}
    if len(dims) > 1:
        raise InputError("holds both 2D images and NIfTI volumes to evaluate; point --clean at one kind "
                         "(or give the others no mask/label)", root)
    return dims.pop()


def _target_column(rows: Sequence[Mapping[str, str]], root: Path) -> str | None:
    """The index column that names target files: ``mask``, or ``label`` when its values are files."""
    first = rows[0]
    if (col := _column(first, ("mask",))) is not None:
        return col
    col = _column(first, ("label",))
    if col is not None and all((root / _key(r.get(col) or "")).is_file() for r in rows if (r.get(col) or "").strip()):
        return col
    return None


def _index_target(root: Path, image: Path, named: str, masks: Path | None) -> Path | None:
    """The target of an index row: ``--masks`` or the file the row names, else found beside ``images/``."""
    if masks is None and named.strip():
        target: Path | None = root / _key(named)
    else:
        target = find_target(image, root, masks)
    return target if target is not None and target.is_file() else None


def _index_rows(root: Path) -> list[dict[str, str]] | None:
    """The rows of ``index.csv`` when it has ``image`` and ``split`` columns, else None."""
    path = root / INDEX_FILE
    if not path.is_file():
        return None
    rows = _read_csv(path, INDEX_FILE)
    if not rows or _column(rows[0], ("image",)) is None or _column(rows[0], ("split",)) is None:
        log.info("%s has no image and split columns; splitting by subject", path)
        return None
    return rows


def _from_index(root: Path, rows: list[dict[str, str]], masks: Path | None, labels: str | Path | None) -> EvalFolder:
    image_col, split_col = _column(rows[0], ("image",)), _column(rows[0], ("split",))
    assert image_col is not None and split_col is not None  # checked by _index_rows
    skipped: list[tuple[str, str]] = []
    found: list[tuple[str, Path, dict[str, str]]] = []
    for row in rows:
        key = _key(row.get(image_col) or "")
        if key and (root / key).is_file():
            found.append((key, root / key, row))
        else:
            skipped.append((key or "(empty)", f"listed in {INDEX_FILE} but not found"))
    target_col = _target_column(rows, root)
    classes = None
    if labels is not None or (target_col is None and masks is None and _column(rows[0], ("label",))):
        table = labels if labels is not None else root / INDEX_FILE
        items, classes = _classified(root, [(k, p) for k, p, _ in found], table, skipped)
        task = CLASSIFICATION
    else:
        items = []
        for key, path, row in found:
            target = _index_target(root, path, row.get(target_col or "") or "", masks)
            if target is not None:
                items.append(EvalItem(key, path, target))
            else:
                skipped.append((key, "no mask or label map found"))
        task = SEGMENTATION
    if not items:
        raise InputError(f"none of the {len(rows)} row(s) of {INDEX_FILE} can be used", root / INDEX_FILE)
    splits = {_key(r.get(image_col) or ""): (r.get(split_col) or "").strip().lower() for r in rows}
    fixed = {item.key: splits[item.key] for item in items}
    return EvalFolder(root, items, task, _one_dims(items, root), classes, fixed, skipped)


def _inventory_skips(inv: Inventory, root: Path) -> list[tuple[str, str]]:
    skipped = [(_rel(p, root), reason) for p, reason in (*inv.bad, *inv.dicom.bad)]
    dicom = "DICOM series are not evaluated; convert them to NIfTI first"
    skipped += [(series.key, dicom) for series in inv.dicom.series]
    return skipped


def _from_discovery(root: Path, masks: Path | None, labels: str | Path | None) -> EvalFolder:
    inv = discover(root, masks)
    skipped = _inventory_skips(inv, root)
    found = sorted((*inv.images, *inv.nifti), key=lambda item: item.rel.as_posix())
    if labels is not None:
        items, classes = _classified(root, [(f.rel.as_posix(), f.path) for f in found], labels, skipped)
        return EvalFolder(root, items, CLASSIFICATION, _one_dims(items, root), classes, None, skipped)
    items = [EvalItem(f.rel.as_posix(), f.path, f.target) for f in found if f.target is not None]
    if not items:
        raise InputError("found no image with a mask or label map: put them in masks/ (or labels/) beside images/, "
                         "pass --masks FOLDER, or --labels FILE for classification", root)
    dims = _one_dims(items, root)
    skipped += [(f.rel.as_posix(), "no mask or label map found") for f in found if f.target is None]
    return EvalFolder(root, items, SEGMENTATION, dims, None, None, skipped)


def find_eval_items(root: str | Path, masks: str | Path | None = None, labels: str | Path | None = None) -> EvalFolder:
    """The items of a clean data set folder (see the module docstring); skipped files are logged.

    Args:
        root: The data set folder.
        masks: Folder of masks/label maps at the images' relative paths (segmentation).
        labels: Labels CSV (classification); relative paths resolve against the current
            folder, then against ``root``.

    Raises:
        InputError: The folder does not exist or holds nothing to evaluate.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise InputError("clean data set folder not found; check the --clean path", root)
    masks_root = Path(masks).expanduser().resolve() if masks is not None else None
    if masks_root is not None and not masks_root.is_dir():
        raise InputError("masks folder does not exist; check --masks", masks_root)
    labels = _labels_path(labels, root) if labels is not None else None
    rows = _index_rows(root)
    folder = _from_index(root, rows, masks_root, labels) if rows else _from_discovery(root, masks_root, labels)
    warn_skipped(folder.skipped)
    return folder
