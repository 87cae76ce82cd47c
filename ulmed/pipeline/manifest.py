"""The run manifest: what was done to every input, written as ``manifest.json``.

It records ulmed's and the libraries' versions, the method and its parameters (the budget
in [0, 1] units and in native units, per record), and for every input file its output
path, sha256 and status: ``written`` (protected), ``copied`` (unchanged: masks, labels,
non-image DICOM, other files), ``skipped`` (left out on purpose) or ``failed`` (bad input,
with the reason).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ulmed.choices import StrEnum, look_up, names
from ulmed.io.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"


class Status(StrEnum):
    """What happened to an input file."""

    WRITTEN = "written"  # protected
    COPIED = "copied"  # unchanged: masks, labels, non-image DICOM, other files
    SKIPPED = "skipped"  # left out on purpose
    FAILED = "failed"  # a bad input, with the reason


#: The statuses, in the order the manifest counts them.
STATUSES = names(Status)
_LIBRARIES = ("torch", "numpy", "pydicom", "nibabel", "monai", "scikit-image", "pillow", "tifffile", "segment-anything")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (hashing lets go of the interpreter: threads can hash)."""
    with open(path, "rb") as fh:
        if hasattr(hashlib, "file_digest"):  # Python 3.11: reads into one buffer, no chunk objects
            return hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of ulmed and the libraries that shape its output."""
    versions = {"python": platform.python_version()}
    for name in ("ulmed", *_LIBRARIES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Entry:
    """One input file's fate.

    Args:
        input: Input path relative to the input root.
        status: A :class:`Status` value (kept as text, as the manifest writes it).
        output: Output path relative to the output root (None when skipped/failed).
        kind: ``dicom``, ``nifti``, ``image``, ``target``, ``dicom-non-image`` or ``other``.
        record: Key of the record the file belongs to (a DICOM series has many files).
        sha256: Hash of the output file.
        reason: Why it was skipped or failed, or a note (e.g. JPEG written as PNG).
        budget: The budget in [0, 1] and native units for this record.
        metrics: Imperceptibility of the protected record (PSNR, L-inf ...).
        warnings: What the file libraries (pydicom, codec plugins, Pillow) warned or logged
            while its unit was read, protected and written; shown on the terminal only with
            ``--debug`` (:mod:`ulmed.io.notices`).
    """

    input: str
    status: str
    output: str | None = None
    kind: str = ""
    record: str | None = None
    sha256: str | None = None
    reason: str | None = None
    budget: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    warnings: list[str] | None = None

    def __post_init__(self) -> None:
        self.status = look_up(self.status, Status, "manifest entry status").value


@dataclass
class Manifest:
    """The manifest of one run; :meth:`save` writes it atomically."""

    params: dict[str, Any]
    versions: dict[str, str] = field(default_factory=library_versions)
    started: float = field(default_factory=time.time)
    entries: list[Entry] = field(default_factory=list)
    #: What the method's fit found (:meth:`ulmed.core.method.ProtectionMethod.fit_report`).
    fit: dict[str, Any] = field(default_factory=dict)
    #: This run's own counts: units done now, taken over from an earlier run (resumed), failed.
    run: dict[str, Any] = field(default_factory=dict)
    #: For one part of a sharded run: its index, the part count and the keys of its units.
    part: dict[str, Any] = field(default_factory=dict)
    #: The measured protection of a release (:meth:`ulmed.pipeline.audit.AuditResult.to_manifest`).
    audit: dict[str, Any] = field(default_factory=dict)
    #: The input and output roots of the run that made it (in memory only: never saved, so a
    #: shared manifest names the input folder and relative paths, no local path).
    root: Path | None = field(default=None, repr=False, compare=False)
    out: Path | None = field(default=None, repr=False, compare=False)

    def add(self, entry: Entry) -> None:
        """Append one entry."""
        self.entries.append(entry)

    def counts(self) -> dict[str, int]:
        """Number of entries per status."""
        return {s: sum(e.status == s for e in self.entries) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ulmed_manifest": 1,
            "versions": self.versions,
            "params": self.params,
            "wall_time_s": round(time.time() - self.started, 3),
            "counts": self.counts(),
            **({"run": self.run} if self.run else {}),
            **({"part": self.part} if self.part else {}),
            **({"fit": self.fit} if self.fit else {}),
            **({"audit": self.audit} if self.audit else {}),
            "entries": [asdict(e) for e in self.entries],
        }

    def save(self, out_root: Path, suffix: str = "") -> Path:
        """Write ``manifest.json`` (``manifest<suffix>.json`` for a part) atomically; return its path."""
        path = Path(out_root) / MANIFEST_NAME.replace(".json", f"{suffix}.json")
        atomic_write_json(path, self.to_dict())
        return path

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        """Read a manifest file back as a dict."""
        return json.loads(Path(path).read_text())
