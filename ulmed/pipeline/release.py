"""A segmentation data-set release: protected images, untouched masks, a data card, checksums.

:func:`release_dataset` runs :func:`ulmed.pipeline.protect.protect_path` into the release
folder (images protected; masks, label maps, split files and other files copied byte for
byte), compares every copy with its source, writes ``DATACARD.md`` and, last, ``SHA256SUMS``
over every file (the card and ``manifest.json`` included).

Inputs that fail to read do not stop a release: they are left out, counted on the card with
their reasons (no file names, which may carry patient data) and listed in ``manifest.json``;
the report carries them so that a caller can refuse to publish (``ulmed release`` exits 3).

:func:`verify_release` recomputes the checksums of a release and names every file that
changed, is missing, or was added.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulmed.choices import look_up
from ulmed.core.method import DEFAULT_METHOD
from ulmed.errors import ConfigError, InputError
from ulmed.io.atomic import atomic_write_bytes
from ulmed.pipeline.audit import AuditLevel, AuditResult, attach_figure, run_audit
from ulmed.pipeline.checksums import (
    RUN_STATE_DIR,
    SUMS_NAME,
    read_sums,
    release_files,
    write_sums,
)
from ulmed.pipeline.datacard import (
    DATACARD_NAME,
    CopyCheck,
    record_metrics,
    render_datacard,
    spread,
)
from ulmed.pipeline.journal import remove_stale_temporaries
from ulmed.pipeline.manifest import MANIFEST_NAME, Entry, Manifest, sha256_of
from ulmed.pipeline.protect import protect_path
from ulmed.pipeline.resample import resample_dataset

log = logging.getLogger("ulmed")

#: lsp's cell on an ML-ready release's grid (:func:`release_options`): a code of period 4 there.
RELEASE_CELL = 2


@dataclass
class ReleaseReport:
    """What :func:`release_dataset` wrote.

    Args:
        path: The release folder.
        manifest: The protection run's manifest.
        datacard: Path of ``DATACARD.md``.
        sums: Path of ``SHA256SUMS``.
        files: Number of files listed in ``SHA256SUMS``.
        copies: Copies compared with their sources.
        foreign: Files in the release that this run did not write (left by an earlier run).
    """

    path: Path
    manifest: Manifest
    datacard: Path
    sums: Path
    files: int
    copies: CopyCheck
    foreign: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Number of protected records."""
        return len(record_metrics(self.manifest))

    @property
    def failed(self) -> list[Entry]:
        """Manifest entries of the inputs that could not be protected."""
        return [e for e in self.manifest.entries if e.status == "failed"]

    def spread(self, metric: str) -> tuple[float, float, float] | None:
        """(min, median, max) of ``psnr`` or ``ssim`` over the protected records (finite values)."""
        return spread(m.get(metric) for m in record_metrics(self.manifest).values())


def _input_root(manifest: Manifest) -> Path:
    if manifest.root is None:
        raise ValueError("the manifest of a run in this process is needed (its input root is not saved)")
    return manifest.root


def check_copies(manifest: Manifest) -> CopyCheck:
    """Compare every copied file's sha256 (from the manifest) with its source's.

    Args:
        manifest: A protection run's manifest (its ``params["input"]`` is the input path).

    Returns:
        Counts of mask/label and other copies, and the copies that do not match.
    """
    root = _input_root(manifest)
    check = CopyCheck()
    for e in manifest.entries:
        if e.status != "copied":
            continue
        if e.kind == "dicom-non-image" and manifest.params.get("deidentify"):
            check.deidentified += 1  # de-identified on purpose: not byte-identical to its source
            continue
        if e.kind == "target":
            check.targets += 1
        else:
            check.others += 1
        source = Path(e.input) if Path(e.input).is_absolute() else root / e.input
        try:
            same = source.is_file() and sha256_of(source) == e.sha256
        except OSError:
            same = False
        if not same:
            check.mismatched.append(e.output or e.input)
    return check


def release_dataset(input_path: str | Path, output_path: str | Path, *, size: int | None = None,
                    fit: str = "letterbox", audit: str | None = None, **options: Any) -> ReleaseReport:
    """Protect a data set into a release folder with ``DATACARD.md`` and ``SHA256SUMS``.

    Args:
        input_path: Data-set folder (``images/`` + ``masks/`` or ``labels/``, split files ...).
        output_path: Release folder (created; must be outside the input).
        size: Release an ML-ready copy: every image and mask resampled to ``size x size``
            (:func:`ulmed.pipeline.resample.resample_dataset`) and protected on that grid.
            2D image data sets only.
        fit: With ``size``: ``letterbox`` (aspect kept, padded) or ``stretch``.
        audit: ``quick`` or ``full``: after protecting, train victims on the original and the
            protected train split of this very data (:func:`ulmed.pipeline.audit.run_audit`) and put
            the measured ratios on the card, in ``manifest.json`` (``audit``) and as ``AUDIT.png``.
        **options: As :func:`ulmed.pipeline.protect.protect_path` (``method``, ``eps``, ``seed``,
            ``masks``, ``workers``, ``deidentify`` ...). With ``overwrite``, files already in the
            folder that this run does not write stay, are listed in ``SHA256SUMS`` and named on the
            card. ``deidentify`` applies to DICOM files only (keyed by ``$ULMED_DEID_KEY``); a DICOM
            file it cannot handle fails as that file (its series is left out) and the card says
            what was de-identified.

    Returns:
        The report; failed inputs are in ``report.failed`` (the release is written anyway).

    Raises:
        UlmedError: As :func:`ulmed.pipeline.protect.protect_path`.
    """
    level = look_up(audit, AuditLevel, "audit level") if audit is not None else None  # checked before any work
    if size is None:
        return _release(input_path, output_path, [], level, **options)
    if options.get("masks") is not None:
        raise ConfigError("--size resamples the masks inside the data-set folder (images/ + masks/); "
                          "move them there instead of giving --masks")
    with tempfile.TemporaryDirectory(prefix="ulmed-resample-") as staging:
        staged = resample_dataset(input_path, staging, size, fit)
        return _release(staged.root, output_path, staged.card_lines(), level, **release_options(options))


def release_options(options: dict[str, Any]) -> dict[str, Any]:
    """The protection options of an ML-ready release: lsp's code gets cells of :data:`RELEASE_CELL`.

    A release is used on its own grid, where the trainer's warps (rotation, scaling, elastic)
    interpolate the code: a period-4 code survives that better than the grid's own checkerboard
    (docs/grid.md: HC18 at 128, seed 0, Dice ratio 0.76 against 0.90 under the augmentation preset,
    0.29 against 0.28 with flips and jitter; over three seeds cell 2 gives 0.84 and 0.27). A ``cell``
    the caller sets, and other methods, are kept.
    """
    method_options = dict(options.get("method_options") or {})
    if (options.get("method") or DEFAULT_METHOD) != "lsp" or "cell" in method_options:  # names as the registry has them
        return options
    return {**options, "method_options": {**method_options, "cell": RELEASE_CELL}}


def _audit(input_path: str | Path, out: Path, level: AuditLevel, options: dict[str, Any]) -> AuditResult:
    """Audit the release ``out`` against its (possibly resampled) input, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="ulmed-audit-") as work:
        data = {"masks": options["masks"]} if options.get("masks") is not None else {}
        result = run_audit(input_path, out, Path(work) / "report", level, seed=options.get("seed", 0),
                           device=options.get("device", "cpu"), **data)
        name = attach_figure(result, out)
    result.figure = out / name if name else None
    return result


def _release(input_path: str | Path, output_path: str | Path, card_lines: list[str],
             audit: AuditLevel | None = None, **options: Any) -> ReleaseReport:
    """:func:`release_dataset` of a folder as it is; ``card_lines`` join the card's "What was done"."""
    remove_stale_temporaries(Path(output_path).expanduser().resolve(), {DATACARD_NAME, SUMS_NAME})  # a killed release
    manifest = protect_path(input_path, output_path, **options)
    if options.get("deidentify") and not any(e.kind.startswith("dicom") for e in manifest.entries):
        log.warning("--deidentify: the data set holds no DICOM file, so nothing was de-identified")
    out = manifest.out or Path(output_path).expanduser().resolve()
    copies = check_copies(manifest)
    measured = _audit(input_path, out, audit, options) if audit is not None else None
    ours = {e.output for e in manifest.entries if e.output} | {MANIFEST_NAME, DATACARD_NAME}
    if measured is not None:
        manifest.audit = measured.to_manifest()
        ours |= {measured.figure.name} if measured.figure is not None else set()
    foreign = [rel for rel in release_files(out) if rel not in ours]
    name = Path(manifest.params["input"]).name
    datacard = out / DATACARD_NAME
    lines = measured.card_lines(manifest.audit["figure"]) if measured is not None else None
    atomic_write_bytes(datacard, render_datacard(name, manifest, copies, foreign, card_lines, lines).encode())
    _make_publishable(out, manifest)
    sums, files = write_sums(out)
    return ReleaseReport(out, manifest, datacard, sums, files, copies, foreign)


def _make_publishable(out: Path, manifest: Manifest) -> None:
    """Drop local paths from the manifest and the run state (journal, run.json) from the release.

    The run state is only needed to resume an interrupted run; once the protection is
    complete it would publish local paths (and, with de-identification, a key fingerprint).
    """
    params = manifest.params
    root = str(_input_root(manifest))
    for entry in manifest.entries:
        if entry.reason:
            entry.reason = entry.reason.replace(root, "<input>")
    for key in ("input", "output", "masks", "labels"):
        if params.get(key):
            params[key] = "." if key == "output" else Path(params[key]).name
    manifest.save(out)
    shutil.rmtree(out / RUN_STATE_DIR, ignore_errors=True)


@dataclass
class VerifyReport:
    """The result of :func:`verify_release`.

    Args:
        path: The release folder.
        verified: Files whose sha256 matched.
        changed: Listed files whose content differs (or that are links, which are not read).
        missing: Listed files that are not there.
        extra: Files that are there but not listed.
        datacard_missing: ``DATACARD.md`` is absent.
    """

    path: Path
    verified: int
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    datacard_missing: bool = False

    def problems(self) -> list[str]:
        """One line per problem: ``changed: PATH``, ``missing: PATH``, ``extra: PATH``."""
        lines = [f"changed: {p}" for p in self.changed] + [f"missing: {p}" for p in self.missing]
        if self.datacard_missing and DATACARD_NAME not in self.missing:
            lines.append(f"missing: {DATACARD_NAME}")
        return lines + [f"extra: {p}" for p in self.extra]

    @property
    def ok(self) -> bool:
        """True when every listed file is there unchanged and nothing else is."""
        return not self.problems()


def _plain_file_inside(root: Path, path: Path) -> bool:
    """``path`` is a regular file (not a link) that resolves inside ``root``."""
    if path.is_symlink():
        return False
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return root in resolved.parents and resolved.is_file()


def _matches(root: Path, file: Path, digest: str) -> bool:
    """``file`` is a plain file inside ``root`` with this sha256 (an unreadable file does not match)."""
    try:
        return _plain_file_inside(root, file) and sha256_of(file) == digest
    except OSError:
        return False


def verify_release(path: str | Path) -> VerifyReport:
    """Recompute the checksums of a release folder against its ``SHA256SUMS``.

    Only paths listed in ``SHA256SUMS`` that resolve inside the folder are read; absolute
    paths and ``..`` are refused when the file is parsed.

    Args:
        path: The release folder.

    Returns:
        The files that matched, changed, are missing or extra, and whether the card is there.

    Raises:
        InputError: The folder does not exist, or ``SHA256SUMS`` is missing or malformed.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError("is not a folder; point verify at a folder written by `ulmed release`", root)
    sums_path = root / SUMS_NAME
    if not sums_path.is_file():
        raise InputError(
            "is missing, so this folder cannot be checked; recreate the release with `ulmed release` "
            "or get SHA256SUMS from its publisher", sums_path,
        )
    listed = read_sums(sums_path)
    real_root = root.resolve()
    report = VerifyReport(root, verified=0)
    for rel, digest in listed.items():
        file = root / rel
        if not os.path.lexists(file):
            report.missing.append(rel)
        elif _matches(real_root, file, digest):
            report.verified += 1
        else:
            report.changed.append(rel)
    report.extra = [rel for rel in release_files(root) if rel not in listed]
    report.datacard_missing = not (root / DATACARD_NAME).is_file()
    return report


__all__ = ["RELEASE_CELL", "ReleaseReport", "VerifyReport", "check_copies", "release_dataset", "release_options",
           "verify_release"]
