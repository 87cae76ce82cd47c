"""Optional de-identification of DICOM datasets with dicognito (extra ``ulmed[deid]``).

dicognito replaces every person name, the listed IDs (PatientID, AccessionNumber, StudyID,
...), addresses and institution names, every instance UID (class and transfer syntax UIDs
are kept) and shifts every date and date-time (with the matching time) by one offset. Each
replacement is a hash of the seed and the original value, so the same seed gives the same
output in every process and on every machine (with the same dicognito version): a series
split over shards or workers keeps one StudyInstanceUID per original study, and one
patient keeps one pseudonym. Pixel data, private elements and free text (descriptions,
comments) are left as they are; burned-in text in the pixels is not removed.

The seed is a secret: whoever knows it can test guesses of original names, IDs and UIDs.
It is hidden from ``repr`` and never logged; nothing here logs any value of a dataset.
dicognito and pydicom are imported only when a dataset is de-identified.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulmed.errors import ConfigError, InputError, MissingDependencyError, OutputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DEID_HINT", "DeidentifyOptions", "copy_deidentified", "deidentifier_info", "deidentify_dataset"]

DEID_HINT = 'install the de-identifier with: pip install "ulmed[deid]"'
log = logging.getLogger("ulmed")
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


@dataclass(frozen=True)
class DeidentifyOptions:
    """How to de-identify; small and picklable so that it travels to every worker.

    Args:
        seed: Secret seed of the pseudonyms, UIDs and date shift. The same seed gives the
            same output everywhere; keep it private and out of manifests (hidden from ``repr``).
    """

    seed: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, str) or not self.seed.strip():
            raise ConfigError("the de-identification seed must be a non-empty text; choose a secret one and keep it")


def _dicognito() -> Any:
    """The dicognito package, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import dicognito.anonymizer
    except ImportError as exc:
        raise MissingDependencyError(f"de-identification needs dicognito, which is not installed; {DEID_HINT}") from exc
    return dicognito


@functools.lru_cache(maxsize=8)
def _anonymizer(seed: str) -> Any:
    """One dicognito ``Anonymizer`` per seed and process (it keeps no state between datasets)."""
    anonymizer = _dicognito().anonymizer.Anonymizer(seed=seed)
    log.debug("de-identifier ready (dicognito %s)", _dicognito().__version__)
    return anonymizer


def deidentifier_info() -> dict[str, str]:
    """Tool and version, for a manifest: other dicognito versions may map values differently.

    Raises:
        MissingDependencyError: dicognito is not installed.
    """
    return {"tool": "dicognito", "version": str(_dicognito().__version__)}


def _has_dates(ds: Dataset) -> bool:
    return any(elem.VR in ("DA", "DT") and elem.value not in (None, "") for elem in ds.iterall())


def deidentify_dataset(ds: Dataset, options: DeidentifyOptions, path: str | Path | None = None) -> None:
    """De-identify ``ds`` in place with dicognito and record it in the dataset.

    dicognito itself appends ``DICOGNITO`` to DeidentificationMethod and sets
    PatientIdentityRemoved to ``YES`` only where BurnedInAnnotation is ``NO``: identity
    text burned into the pixels is not removed (ulmed writes the same image back), so
    that conservative rule is kept. LongitudinalTemporalInformationModified becomes
    ``MODIFIED`` when the dataset held dates, because dicognito shifts them.

    Args:
        ds: The dataset (with its file meta, if any, which is de-identified too).
        options: The seed.
        path: The file it came from, named in errors.

    Raises:
        MissingDependencyError: dicognito is not installed.
        InputError: A value cannot be de-identified (e.g. a malformed date). The message
            names the tag only, never the value.
    """
    _dicognito()  # checked on every call, not only when the anonymizer is first built
    anonymizer = _anonymizer(options.seed)
    if not hasattr(ds, "file_meta"):  # dicognito walks the file meta too
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    try:
        dated = _has_dates(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote the invalid values
            anonymizer.anonymize(ds)
    except Exception as exc:  # noqa: BLE001 - any failure; its text may hold patient data
        found = _TAG.search(str(exc))
        where = f" at tag ({found.group(1)},{found.group(2)})" if found else ""
        raise InputError(
            f"cannot be de-identified{where} ({type(exc).__name__}; the value is not valid DICOM); "
            "fix the value or leave the file out",
            path,
        ) from None  # the chained exception would quote the value
    if dated:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"


def copy_deidentified(src: str | Path, dst: str | Path, options: DeidentifyOptions) -> Path:
    """Write a de-identified copy of a (non-image) DICOM file; the input is never modified.

    The copy is written atomically in the DICOM file format with its transfer syntax
    kept, so compressed pixel data (if any) is copied as it is.

    Args:
        src: The DICOM file.
        dst: Where to write the copy (its folder is created).
        options: The seed; use the run's seed so that UIDs match the protected images.

    Returns:
        ``dst``.

    Raises:
        MissingDependencyError: dicognito is not installed.
        InputError: ``src`` is unreadable, is a DICOMDIR, or a value cannot be de-identified.
        OutputError: ``dst`` is ``src`` or cannot be written.
    """
    import pydicom

    from ulmed.io.dicom_dataset import write_dataset

    src, dst = Path(src), Path(dst)
    _dicognito()
    if dst.resolve() == src.resolve():
        raise OutputError("the output would overwrite this input; choose an output folder outside the input", src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise InputError(f"unreadable DICOM ({type(exc).__name__}); re-export the file or remove it", src) from None
    meta = getattr(ds, "file_meta", None)
    if "DirectoryRecordSequence" in ds or str(getattr(meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
        raise InputError(
            "a DICOMDIR cannot be de-identified by copying (its records name patients, and its offsets and "
            "references would break); leave it out and build a new one over the output if needed",
            src,
        )
    deidentify_dataset(ds, options, src)
    # pydicom's error may quote a value of the dataset: not quoted, not chained
    write_dataset(ds, dst, "de-identified copy", "re-export the file or leave it out", quote=False)
    return dst
