"""``ulmed release`` and ``ulmed verify``: publish a protected data set, check one that was published."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ulmed.cli.app import app, progress_bar, say, state
from ulmed.cli.flags import parse_sets
from ulmed.core.method import DEFAULT_METHOD

_HELP = {
    "input": "Data set: images/ + masks/ (or labels/), split files ...",
    "set": "Method option KEY=VALUE (repeatable), e.g. --set rho=0.1.",
    "deidentify": ("De-identify DICOM with dicognito first, keyed by the secret in $ULMED_DEID_KEY "
                   "(pip install \"ulmed[deid]\")."),
    "size": ("ML-ready release: resample images (antialiased) and masks (nearest) to N x N and protect on that grid "
             "(2D data sets)."),
}


@app.command()
def release(  # one parameter per command-line option (typer)
    input: Annotated[Path, typer.Option("--input", "-i", help=_HELP["input"])],
    output: Annotated[Path, typer.Option("--output", "-o", help="Release folder (outside the input).")],
    method: Annotated[str, typer.Option(help="Protection method (see `ulmed methods`).")] = DEFAULT_METHOD,
    eps: Annotated[str, typer.Option(help="L-inf budget: 8/255, 0.03, or native units such as 20HU.")] = "8/255",
    masks: Annotated[Path | None, typer.Option(help="Masks folder matched to the images by relative path.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty release folder.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help=_HELP["set"])] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (local) or concurrent Ray tasks.")] = 1,
    engine: Annotated[str, typer.Option(help="local or ray (pip install \"ulmed[ray]\").")] = "local",
    deidentify: Annotated[bool, typer.Option("--deidentify", help=_HELP["deidentify"])] = False,
    size: Annotated[int | None, typer.Option(help=_HELP["size"])] = None,
    fit: Annotated[str, typer.Option(help="With --size: letterbox (aspect kept, padded) or stretch.")] = "letterbox",
) -> None:
    """Protect a segmentation data set into a release folder with DATACARD.md and SHA256SUMS (rerun to resume)."""
    from ulmed.pipeline.method_options import check_method_options
    from ulmed.pipeline.release import release_dataset

    report = release_dataset(
        input, output, method=method, eps=eps, seed=state.seed, device=state.device, masks=masks,
        overwrite=overwrite, method_options=check_method_options(method, parse_sets(set_ or [])),
        progress=progress_bar, workers=workers, engine=engine, deidentify=deidentify, size=size, fit=fit,
    )
    psnr = report.spread("psnr")
    psnr_text = f", PSNR {psnr[0]:.2f}-{psnr[2]:.2f} dB" if psnr is not None else ""
    if state.verbosity >= 0:
        say(f"{report.records} record(s) protected{psnr_text}, {report.files} file(s) in SHA256SUMS "
            f"-> {report.datacard}")
    for e in report.failed:
        say(f"failed {e.input}: {e.reason}")
    if report.failed:
        raise typer.Exit(code=3 if report.records else 2)


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


__all__ = ["release", "verify"]
