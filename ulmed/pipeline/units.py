"""Units of work of a run: one DICOM series, one NIfTI volume or one image each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ulmed.io.dicom import DicomSeries, read_series
from ulmed.io.discover import Inventory, Item
from ulmed.io.images import read_image
from ulmed.io.nifti import read_nifti
from ulmed.io.record import Record


@dataclass(frozen=True)
class Unit:
    """One piece of work: a DICOM series, a NIfTI volume or an image."""

    kind: str
    key: str
    source: DicomSeries | Item

    @property
    def files(self) -> list[Path]:
        """The input files this unit reads."""
        if isinstance(self.source, DicomSeries):
            return list(self.source.files)
        return [self.source.path]


def units_of(inv: Inventory) -> list[Unit]:
    """All units of an inventory, in a stable order (series, volumes, images)."""
    units = [Unit("dicom", s.key, s) for s in inv.dicom.series]
    units += [Unit("nifti", str(i.rel), i) for i in inv.nifti]
    units += [Unit("image", str(i.rel), i) for i in inv.images]
    return units


def read_unit(unit: Unit, root: Path) -> Record:
    """Read a unit into a record, with its target when one was found."""
    if isinstance(unit.source, DicomSeries):
        return read_series(unit.source, root)
    if unit.kind == "nifti":
        return read_nifti(unit.source.path, key=unit.key, label_path=unit.source.target)
    return read_image(unit.source.path, key=unit.key, mask_path=unit.source.target)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as text (the absolute path when outside it)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
