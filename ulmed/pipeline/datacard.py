"""``DATACARD.md``: what a protected data-set release holds and how it was made.

Everything on the card comes from the run's manifest (method, budget, seed, per-record
imperceptibility, counts, versions) or from checks made at release time (copies compared
with their sources). It names no input file: failures are given as counts and reasons.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ulmed.core.budget import Budget
from ulmed.core.method import METHODS
from ulmed.errors import ConfigError
from ulmed.pipeline.manifest import Manifest

DATACARD_NAME = "DATACARD.md"
#: Run parameters that are not printed: local paths, an internal salt, how the work was spread.
_NOT_PRINTED = ("input", "output", "masks", "labels", "uid_salt", "engine", "workers", "num_parts", "ray_address")


@dataclass
class CopyCheck:
    """Copies compared with their sources at release time.

    Args:
        targets: Mask/label files copied.
        others: Other files copied (split files, licences, non-image DICOM).
        mismatched: Copies whose sha256 differs from their source's, or whose source is gone.
        deidentified: Non-image DICOM files copied de-identified (``--deidentify``): they differ
            from their source on purpose and are not compared.
    """

    targets: int = 0
    others: int = 0
    mismatched: list[str] = field(default_factory=list)
    deidentified: int = 0


def spread(values: Iterable[float]) -> tuple[float, float, float] | None:
    """(min, median, max) of the finite values, or None when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (min(finite), statistics.median(finite), max(finite)) if finite else None


def record_metrics(manifest: Manifest) -> dict[str, dict[str, float]]:
    """Imperceptibility per protected record (a DICOM series' files share one entry)."""
    out: dict[str, dict[str, float]] = {}
    for e in manifest.entries:
        if e.status == "written" and e.metrics is not None:
            out.setdefault(e.record or e.input, e.metrics)
    return out


def record_budgets(manifest: Manifest) -> dict[tuple[float, str], list[float]]:
    """Native budgets of the protected records, by (eps in [0, 1] units, native unit)."""
    seen: dict[str, tuple[float, str, float]] = {}
    for e in manifest.entries:
        if e.status == "written" and e.budget is not None:
            b = e.budget
            seen.setdefault(e.record or e.input, (round(b["eps_unit"], 6), b["native_unit"], b["eps_native"]))
    groups: dict[tuple[float, str], list[float]] = {}
    for eps_unit, unit, eps_native in seen.values():
        groups.setdefault((eps_unit, unit), []).append(eps_native)
    return groups


def _deidentification_line(manifest: Manifest) -> str | None:
    """What was done to the DICOM headers (``--deidentify``), on one line; None when neither applies."""
    params = manifest.params
    dicom = sum(e.kind in ("dicom", "dicom-non-image") and e.status in ("written", "copied") for e in manifest.entries)
    if not params.get("deidentify"):
        return "- De-identification: none (the DICOM headers are the original ones)" if dicom else None
    tool = params.get("deidentifier") or {}
    name = f"{tool.get('tool', params['deidentify'])} {tool.get('version', '')}".strip()
    if not dicom:
        return f"- De-identification: requested ({name}), but this release holds no DICOM file, so nothing was changed"
    return (f"- De-identification: the headers of the {dicom} DICOM file(s) were de-identified with {name} "
            "(names, IDs, addresses and instance UIDs replaced by keyed pseudonyms, dates shifted); free text, "
            "private elements and text burned into the pixels were not removed")


def _budget_text(spec: Any) -> str:
    """The run's budget as the card states it: its norm and size, and the PSNR floor where one applies."""
    try:
        budget = Budget.parse(spec)
    except ConfigError:
        return f"{spec}"
    floors = []
    if budget.image_psnr is not None:
        floors.append(f"images to a PSNR of at least {budget.image_psnr:g} dB against their data range")
    if budget.robust_psnr is not None:
        floors.append(f"DICOM and NIfTI records to a PSNR of at least {budget.robust_psnr:g} dB against their "
                      "robust range")
    floor = f"; scaled down where needed: {' and '.join(floors)}" if floors else ""
    return f"{budget.label} (the most any value moved{floor})"


def _method_lines(manifest: Manifest) -> list[str]:
    params = manifest.params
    name = str(params.get("method", "?"))
    cls = METHODS.get(name) if name in METHODS else None
    doc = ((cls.__doc__ or "").strip().splitlines() or [""])[0] if cls else ""
    shown = (*_NOT_PRINTED, "method", "budget", "seed", "deidentify", "deidentifier")
    extra = {k: v for k, v in params.items() if k not in shown and v is not None}
    lines = [f"- Method: `{name}` — {doc}" if doc else f"- Method: `{name}`",
             f"- Budget: {_budget_text(params.get('budget'))}"]
    for (eps_unit, unit), natives in sorted(record_budgets(manifest).items()):
        lo, hi = min(natives), max(natives)
        amount = f"±{lo:.4g}" if round(lo, 4) == round(hi, 4) else f"±{lo:.4g} to ±{hi:.4g}"
        where = unit if unit != "value" else "(stored pixel values)"
        lines.append(f"  - {eps_unit:.6f} in [0, 1] units = {amount} {where} for {len(natives)} record(s)")
    lines.append(f"- Seed: {params.get('seed')}")
    if deid := _deidentification_line(manifest):
        lines.append(deid)
    if extra:
        lines.append("- Other parameters: " + ", ".join(f"`{k}={v}`" for k, v in sorted(extra.items())))
    return lines


def _imperceptibility_lines(metrics: dict[str, dict[str, float]]) -> list[str]:
    psnr = spread(m.get("psnr") for m in metrics.values())
    ssim = spread(m.get("ssim") for m in metrics.values())
    identical = sum(m.get("psnr") == float("inf") for m in metrics.values())
    lines = [f"Measured on the {len(metrics)} protected record(s), protected against original, in [0, 1] units.", ""]
    if psnr is None and ssim is None:
        return lines + ["No finite PSNR/SSIM: no record was changed." if identical else "No record was protected."]
    lines += ["| metric | min | median | max |", "|---|---|---|---|"]
    if psnr is not None:
        lines.append("| PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in psnr) + " |")
    if ssim is not None:
        lines.append("| SSIM | " + " | ".join(f"{v:.4f}" for v in ssim) + " |")
    if identical:
        lines += ["", f"{identical} record(s) came out identical to the original (PSNR infinite, left out above)."]
    return lines


def _content_lines(manifest: Manifest, copies: CopyCheck, foreign: list[str]) -> list[str]:
    counts = manifest.counts()
    records = len({e.record or e.input for e in manifest.entries if e.status == "written"})
    lines = [
        "| files | count |", "|---|---|",
        f"| protected (perturbed) | {counts['written']} ({records} record(s)) |",
        f"| copied unchanged | {counts['copied'] - copies.deidentified} "
        f"({copies.targets} mask/label, {copies.others} other) |",
        *([f"| copied de-identified (non-image DICOM) | {copies.deidentified} |"] if copies.deidentified else []),
        f"| skipped on purpose | {counts['skipped']} |",
        f"| failed (not in this release) | {counts['failed']} |",
        "",
    ]
    if copies.mismatched:
        lines.append(f"**Warning:** {len(copies.mismatched)} copied file(s) differ from their source "
                     "(was the input changed during the run?); re-run the release.")
    else:
        lines.append(f"Masks and labels are unchanged: each of the {copies.targets} mask/label file(s) and "
                     f"{copies.others} other file(s) was compared by sha256 with its source at release time.")
    if copies.deidentified:
        lines.append(f"The {copies.deidentified} non-image DICOM file(s) (structure sets, reports ...) were copied "
                     "de-identified: they differ from their source on purpose and were not compared.")
    renamed = sum(e.status == "written" and e.output is not None and e.output != e.input for e in manifest.entries)
    if renamed:
        lines += ["", (f"{renamed} lossy input(s) (JPEG) were written losslessly under a new name (.png); "
                       "files that list images by name (e.g. a split file) still carry the old names.")]
    if foreign:
        lines += ["", (f"{len(foreign)} file(s) in this folder were not written by this run (left from an "
                       "earlier run, --overwrite); they are listed in SHA256SUMS but not described here:")]
        lines += [f"- `{rel}`" for rel in foreign]
    return lines


def scrub_reason(reason: str, manifest: Manifest) -> str:
    """A failure reason with the input folder and every input file's path replaced by placeholders.

    File and folder names may carry patient names; the card must not.
    """
    root = Path(str(manifest.params.get("input", "")))
    roots = {str(root), str(root.parent)} if root.suffix else {str(root)}
    for text in sorted(roots, key=len, reverse=True):
        if len(text) > 1:
            reason = reason.replace(text, "<input>")
    for rel in sorted({e.input for e in manifest.entries}, key=len, reverse=True):
        reason = reason.replace(rel, "<file>")
    return reason


def _failure_lines(manifest: Manifest) -> list[str]:
    failed = [e for e in manifest.entries if e.status == "failed"]
    reasons = Counter(scrub_reason(e.reason or "no reason given", manifest) for e in failed)
    if not reasons:
        return []
    lines = ["## Failures", "",
             (f"{sum(reasons.values())} input file(s) could not be protected and are not in this release "
              "(file names are left out on purpose; manifest.json lists them):"), ""]
    return lines + [f"- {n} x {reason}" for reason, n in reasons.most_common()] + [""]


def render_datacard(name: str, manifest: Manifest, copies: CopyCheck, foreign: list[str] | None = None,
                    done: list[str] | None = None, measured: list[str] | None = None) -> str:
    """The text of ``DATACARD.md``.

    Args:
        name: Data-set name (the input folder's name).
        manifest: The manifest of the protection run.
        copies: Result of comparing the copied files with their sources.
        foreign: Files in the release that the run did not write (relative paths).
        done: More lines for "What was done" (a resampling before the protection).
        measured: The audit's section (:meth:`ulmed.pipeline.audit.AuditResult.card_lines`), after
            "Imperceptibility".

    Returns:
        Markdown text.
    """
    versions = manifest.versions
    method = str(manifest.params.get("method", "?"))
    cls = METHODS.get(method) if method in METHODS else None
    citation = (cls.citation if cls is not None else "") or "control, no paper"
    ulmed_version = versions.get("ulmed", "unknown")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"# Data card: {name} (protected release)", "",
        (f"Released with ulmed {ulmed_version} on {today} (UTC). The images carry a small, bounded "
         "\"unlearnable\" perturbation meant to keep models trained on them from learning the anatomy; "
         + ("masks and labels are the original ones resampled to the images' grid (below), other files the "
            "original ones." if done else "masks, labels and other files are the original ones.")), "",
        ("Check the files with `sha256sum -c SHA256SUMS` (or `ulmed verify .`) in this folder. "
         "`manifest.json` lists what happened to every file."), "",
        "## What was done", "", *(done or []), *_method_lines(manifest), "",
        "## Imperceptibility", "", *_imperceptibility_lines(record_metrics(manifest)), "",
        *(measured or []),
        "## Contents", "", *_content_lines(manifest, copies, foreign or []), "",
        *_failure_lines(manifest),
        "## Versions", "", "| package | version |", "|---|---|",
        *[f"| {pkg} | {ver} |" for pkg, ver in versions.items()], "",
        "## How to cite", "",
        f"- The method (`{method}`): {citation}",
        (f"- The software: ulmed {ulmed_version}, unlearnable medical images (Apache-2.0), with the method "
         "and budget above."), "",
    ]
    return "\n".join(lines)


__all__ = ["DATACARD_NAME", "CopyCheck", "record_budgets", "record_metrics", "render_datacard", "spread"]
