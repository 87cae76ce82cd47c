"""Units of work of a run: one DICOM series, one NIfTI volume, one image, or one file to copy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulmed.io.dicom_series import DicomSeries
from ulmed.io.discover import Inventory, Item
from ulmed.io.kinds import output_relpath
from ulmed.io.record import Record
from ulmed.pipeline.manifest import sha256_of


@dataclass(frozen=True)
class Copy:
    """A file copied unchanged (mask, label map, split file, non-image DICOM).

    Args:
        path: Absolute input path.
        dst: Output path relative to the output root.
        kind: ``target``, ``other`` or ``dicom-non-image``.
    """

    path: Path
    dst: Path
    kind: str


@dataclass(frozen=True)
class Unit:
    """One piece of work: a DICOM series, a NIfTI volume, an image, or a copy."""

    kind: str
    key: str
    source: DicomSeries | Item | Copy

    @property
    def files(self) -> list[Path]:
        """The input files this unit reads."""
        if isinstance(self.source, DicomSeries):
            return list(self.source.files)
        return [self.source.path]

    @property
    def inputs(self) -> list[Path]:
        """Every file that shapes this unit's output: its files and its mask or label map."""
        target = getattr(self.source, "target", None)
        return self.files + ([target] if target is not None else [])


def units_of(inv: Inventory) -> list[Unit]:
    """All records to protect of an inventory, in a stable order (series, volumes, images)."""
    units = [Unit("dicom", s.key, s) for s in inv.dicom.series]
    units += [Unit("nifti", str(i.rel), i) for i in inv.nifti]
    units += [Unit("image", str(i.rel), i) for i in inv.images]
    return units


def copies_of(inv: Inventory, masks_root: Path | None, skip_non_image: bool) -> list[Unit]:
    """The files of an inventory that are copied unchanged, as units keyed ``copy:<output path>``.

    Masks from a ``--masks`` folder outside the input go to ``masks/`` in the output.
    """
    root = inv.root
    items: list[Copy] = []
    for path in inv.targets:
        inside = masks_root is not None and masks_root in path.parents
        dst = Path("masks") / path.relative_to(masks_root) if inside and masks_root else path.relative_to(root)
        items.append(Copy(path, dst, "target"))
    items += [Copy(p, p.relative_to(root), "other") for p in inv.others]
    if not skip_non_image:
        items += [Copy(p, p.relative_to(root), "dicom-non-image") for p in inv.dicom.non_image]
    return [Unit("copy", f"copy:{c.dst.as_posix()}", c) for c in items]


def output_paths(unit: Unit, root: Path) -> list[str]:
    """The output paths (relative, ``/``-separated) that a unit writes."""
    if isinstance(unit.source, Copy):
        return [unit.source.dst.as_posix()]
    if isinstance(unit.source, DicomSeries):
        return [Path(relative(p, root)).as_posix() for p in unit.source.files]
    rel = unit.source.rel
    return [(output_relpath(rel) if unit.kind == "image" else rel).as_posix()]


def read_unit(unit: Unit, root: Path) -> Record:
    """Read a unit into a record, with its target when one was found.

    Each reader is imported here, by the first unit of its kind: a DICOM run never loads nibabel
    or tifffile, an image run never loads pydicom.
    """
    if isinstance(unit.source, DicomSeries):
        from ulmed.io.dicom import read_series

        return read_series(unit.source, root)
    if isinstance(unit.source, Copy):
        raise TypeError(f"{unit.key} is a copy, not a record")
    if unit.kind == "nifti":
        from ulmed.io.nifti import read_nifti

        return read_nifti(unit.source.path, key=unit.key, label_path=unit.source.target)
    from ulmed.io.images import read_image

    return read_image(unit.source.path, key=unit.key, mask_path=unit.source.target)


def input_stamps(unit: Unit, root: Path) -> dict[str, list[Any]]:
    """What a unit's inputs were when it was done: ``{relative path: [size, mtime_ns, sha256]}``.

    Paths are relative to the input root, so a moved input folder still matches.
    """
    stamps: dict[str, list[Any]] = {}
    for path in unit.inputs:
        st = os.stat(path)
        stamps[relative(path, root)] = [st.st_size, st.st_mtime_ns, sha256_of(path)]
    return stamps


def inputs_changed(unit: Unit, root: Path, stamps: dict[str, list[Any]] | None) -> bool:
    """True when a unit's inputs differ from ``stamps``: a file added, removed or changed.

    Size and mtime decide when both match; when only the mtime differs (a copied folder), the
    content hash decides. Units journalled without stamps count as changed.
    """
    if not stamps:
        return True
    paths = {relative(p, root): p for p in unit.inputs}
    if set(paths) != set(stamps):
        return True
    for rel, path in paths.items():
        size, mtime_ns, digest = stamps[rel]
        try:
            st = os.stat(path)
            if st.st_size != size or (st.st_mtime_ns != mtime_ns and sha256_of(path) != digest):
                return True
        except OSError:
            return True
    return False


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as text (the absolute path when outside it)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
