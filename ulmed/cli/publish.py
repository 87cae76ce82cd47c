"""``ulmed release`` and ``ulmed verify``: publish a protected data set, check one that was published."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ulmed.cli.app import app, progress_bar, say, state
from ulmed.cli.flags import parse_sets
from ulmed.core.budget import DEFAULT_BUDGET
from ulmed.core.method import DEFAULT_METHOD

_HELP = {
    "input": "Data set: images/ + masks/ (or labels/), split files ...",
    "set": "Method option KEY=VALUE (repeatable), e.g. --set rho=0.1.",
    "eps": ("L-inf budget: auto (8/255 at PSNR >= 38 dB; DICOM/NIfTI: 16/255 of the robust range at >= 40 dB), "
            "8/255 or 0.03."),
    "deidentify": ("De-identify DICOM with dicognito first, keyed by the secret in $ULMED_DEID_KEY "
                   "(pip install \"ulmed[deid]\")."),
    "size": ("ML-ready release: resample images (antialiased) and masks (nearest) to N x N and protect on that grid "
             "(2D data sets)."),
    "audit": ("quick or full: train victims on the original and the protected train split of this data and put the "
              "measured Dice ratios on DATACARD.md, in manifest.json and AUDIT.png (quick: ~10 min for a few hundred "
              "2D images on 2 cores)."),
    "original": "The original data set (images/ + masks/, NIfTI + labels/, or images with --labels CSV).",
    "protected": "Its protected copy (ulmed protect or ulmed release output).",
}


@app.command()
def release(  # one parameter per command-line option (typer)
    input: Annotated[Path, typer.Option("--input", "-i", help=_HELP["input"])],
    output: Annotated[Path, typer.Option("--output", "-o", help="Release folder (outside the input).")],
    method: Annotated[str, typer.Option(help="Protection method (see `ulmed methods`).")] = DEFAULT_METHOD,
    eps: Annotated[str, typer.Option(help=_HELP["eps"])] = DEFAULT_BUDGET,
    masks: Annotated[Path | None, typer.Option(help="Masks folder matched to the images by relative path.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty release folder.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help=_HELP["set"])] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (local) or concurrent Ray tasks.")] = 1,
    engine: Annotated[str, typer.Option(help="local or ray (pip install \"ulmed[ray]\").")] = "local",
    deidentify: Annotated[bool, typer.Option("--deidentify", help=_HELP["deidentify"])] = False,
    size: Annotated[int | None, typer.Option(help=_HELP["size"])] = None,
    fit: Annotated[str, typer.Option(help="With --size: letterbox (aspect kept, padded) or stretch.")] = "letterbox",
    audit: Annotated[str | None, typer.Option(help=_HELP["audit"])] = None,
) -> None:
    """Protect a segmentation data set into a release folder with DATACARD.md and SHA256SUMS (rerun to resume)."""
    from ulmed.pipeline.method_options import check_method_options
    from ulmed.pipeline.release import release_dataset

    report = release_dataset(
        input, output, method=method, eps=eps, seed=state.seed, device=state.device, masks=masks,
        overwrite=overwrite, method_options=check_method_options(method, parse_sets(set_ or [])),
        progress=progress_bar, workers=workers, engine=engine, deidentify=deidentify, size=size, fit=fit,
        audit=audit,
    )
    psnr = report.spread("psnr")
    psnr_text = f", PSNR {psnr[0]:.2f}-{psnr[2]:.2f} dB" if psnr is not None else ""
    if state.verbosity >= 0:
        say(f"{report.records} record(s) protected{psnr_text}, {report.files} file(s) in SHA256SUMS "
            f"-> {report.datacard}")
    if state.verbosity >= 0 and report.manifest.audit:
        say(audit_line(report.manifest.audit))
    for e in report.failed:
        say(f"failed {e.input}: {e.reason}")
    if report.failed:
        raise typer.Exit(code=3 if report.records else 2)


def audit_line(audit: dict[str, Any]) -> str:
    """One line: the measured ratios per victim and defense."""
    parts = [f"{r['victim']}/{r['defense']} {r['ratio']:.2f}" if r.get("ratio") is not None
             else f"{r['victim']}/{r['defense']} n/a" for r in audit["rows"]]
    head = f"audit ({audit['level']}, {audit['wall_s'] / 60:.1f} min), {audit['metric']} ratio to clean: "
    return head + ", ".join(parts)


@app.command("audit")
def audit_command(  # one parameter per command-line option (typer)
    original: Annotated[Path, typer.Option("--input", "-i", help=_HELP["original"])],
    protected: Annotated[Path, typer.Option("--protected", "-p", help=_HELP["protected"])],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audit folder (report, AUDIT.md); reruns resume.")],
    level: Annotated[str, typer.Option(help="quick or full.")] = "quick",
    masks: Annotated[Path | None, typer.Option(help="Masks folder matched to the images by relative path.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (image,label) of a classification set.")] = None,
    subject: Annotated[str | None, typer.Option(help="Regex over the file stem naming the subject (split).")] = None,
) -> None:
    """Measure a protection on your own data: victims trained on original and protected copies, tested on clean."""
    from ulmed.pipeline.audit import audit_card, run_audit

    data = {k: v for k, v in {"masks": masks, "labels": labels, "subject": subject}.items() if v is not None}
    result = run_audit(original, protected, output, level, seed=state.seed, device=state.device,
                       progress=say if state.verbosity >= 0 else None, **data)
    card = audit_card(result, output)
    if state.verbosity >= 0:
        say(f"{audit_line(result.to_manifest())} -> {card}")


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Release folder written by `ulmed release`.")],
) -> None:
    """Check a release folder against its SHA256SUMS; exit code 1 if a file changed, is missing or extra."""
    from ulmed.pipeline.release import verify_release

    report = verify_release(path)
    for line in report.problems():
        say(line)
    if not report.ok:
        raise typer.Exit(code=1)
    if state.verbosity >= 0:
        say(f"OK: {report.verified} files verified")


__all__ = ["audit_command", "audit_line", "release", "verify"]
