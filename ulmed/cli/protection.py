"""``ulmed protect`` and ``ulmed merge-manifests``: protect files into a folder, join a sharded run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ulmed.cli.app import app, progress_bar, say, state
from ulmed.cli.flags import apply_config, method_options
from ulmed.core.budget import DEFAULT_BUDGET
from ulmed.core.method import DEFAULT_METHOD

_HELP = {
    "input": "DICOM export, NIfTI file/folder, image folder or data set.",
    "eps": ("L-inf budget: auto (8/255 at PSNR >= 38 dB; DICOM/NIfTI: 16/255 of the robust range at >= 40 dB), "
            "8/255, 0.03 or native units such as 20HU."),
    "masks": "Masks folder matched to the images by relative path.",
    "dicom_encoding": "DICOM output: explicit, rle, jpegls or j2k (lossless only).",
    "skip_non_image": "Leave SR/SEG/RTSTRUCT/PR... out instead of copying them.",
    "strict": "Stop at the first bad input instead of skipping it.",
    "labels": "CSV of class labels by relative path (classification).",
    "rho": "SALM: fraction of positions that may change (L0 budget).",
    "augment": "em/salm: trainer augmentation to optimise against: none, flip_jitter, standard, robust or armor.",
    "objective": "em/salm: PGD objective, loss (error-minimising) or bayes (Bayes-error ascent).",
    "grid": ("lsp: the trainer's working grid: auto (default; size:128 for 2D images), native, "
             "or size:N[,M...] (a 2D trainer that resizes to N x N)."),
    "fit": "lsp with --grid size:N: how the trainer fits an image into N x N, letterbox or stretch.",
    "set": "Method option KEY=VALUE (repeatable), e.g. --set rounds=5.",
    "config": "YAML file with option values (e.g. configs/protect/salm.yaml); flags win.",
    "deidentify": ("De-identify DICOM with dicognito first, keyed by the secret in $ULMED_DEID_KEY "
                   "(pip install \"ulmed[deid]\")."),
    "chunk_size": "em/salm: records per fit; the surrogate is carried from chunk to chunk.",
    "num_parts": "Split the work into N parts (Slurm array, Kubernetes jobs); then ulmed merge-manifests.",
    "engine": "local or ray (pip install \"ulmed[ray]\").",
    "ray_address": "Join this Ray cluster (engine ray); default: start a local one.",
    "metrics": ("Manifest imperceptibility: sampled (SSIM over about 262k window positions per record, "
                "the share stated), full, or none (no SSIM); PSNR and norms are exact."),
}


@app.command()
def protect(  # one parameter per command-line option (typer)
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", "-i", help=_HELP["input"])],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (outside the input).")],
    method: Annotated[str, typer.Option(help="Protection method (see `ulmed methods`).")] = DEFAULT_METHOD,
    eps: Annotated[str, typer.Option(help=_HELP["eps"])] = DEFAULT_BUDGET,
    masks: Annotated[Path | None, typer.Option(help=_HELP["masks"])] = None,
    dicom_encoding: Annotated[str, typer.Option(help=_HELP["dicom_encoding"])] = "explicit",
    skip_non_image: Annotated[bool, typer.Option("--skip-non-image", help=_HELP["skip_non_image"])] = False,
    strict: Annotated[bool, typer.Option("--strict", help=_HELP["strict"])] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty output folder.")] = False,
    labels: Annotated[Path | None, typer.Option(help=_HELP["labels"])] = None,
    rho: Annotated[float | None, typer.Option(help=_HELP["rho"])] = None,
    augment: Annotated[str | None, typer.Option(help=_HELP["augment"])] = None,
    objective: Annotated[str | None, typer.Option(help=_HELP["objective"])] = None,
    grid: Annotated[str | None, typer.Option(help=_HELP["grid"])] = None,
    fit: Annotated[str | None, typer.Option(help=_HELP["fit"])] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=_HELP["set"])] = None,
    config: Annotated[Path | None, typer.Option(help=_HELP["config"])] = None,
    deidentify: Annotated[bool, typer.Option("--deidentify", help=_HELP["deidentify"])] = False,
    chunk_size: Annotated[int, typer.Option(help=_HELP["chunk_size"])] = 1000,
    num_parts: Annotated[int, typer.Option(help=_HELP["num_parts"])] = 1,
    part_id: Annotated[int, typer.Option(help="The part this process does, 0..N-1.")] = 0,
    engine: Annotated[str, typer.Option(help=_HELP["engine"])] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes (local) or concurrent Ray tasks.")] = 1,
    ray_address: Annotated[str | None, typer.Option(help=_HELP["ray_address"])] = None,
    metrics: Annotated[str, typer.Option(help=_HELP["metrics"])] = "sampled",
) -> None:
    """Protect every image under INPUT and write valid files of the same kind to OUTPUT.

    Rerunning the same command into the same OUTPUT resumes an interrupted run.
    """
    from ulmed.pipeline.protect import run_protection
    from ulmed.pipeline.request import ProtectRequest

    start = time.perf_counter()
    opts = apply_config(ctx, config, {"method": method, "eps": eps, "dicom_encoding": dicom_encoding,
                                      "skip_non_image": skip_non_image, "masks": masks, "labels": labels,
                                      "chunk_size": chunk_size, "options": {}})
    flags = {"rho": rho, "augment": augment, "objective": objective, "grid": grid, "fit": fit}
    options = method_options(str(opts["method"]), opts.pop("options"), set_ or [], flags)  # type: ignore[arg-type]
    request = ProtectRequest(
        input, output, seed=state.seed, device=state.device, strict=strict, overwrite=overwrite,
        method_options=options, deidentify=deidentify, num_parts=num_parts, part_id=part_id, engine=engine,
        workers=workers, ray_address=ray_address, metrics=metrics, **opts,  # type: ignore[arg-type]
    )
    manifest = run_protection(request, progress=progress_bar)
    summary_line(manifest, time.perf_counter() - start, output)


def summary_line(manifest: object, seconds: float, output: Path) -> None:
    """The closing line of a run: records by kind, resumed, copied, skipped, failed, PSNR, time.

    Raises:
        typer.Exit: Some inputs failed (code 3 when records were protected, else 2).
    """
    from ulmed.pipeline.protect import summarize

    s = summarize(manifest)  # type: ignore[arg-type]
    if state.verbosity >= 0:
        kinds = ", ".join(f"{n} {k}" for k, n in s["by_kind"].items()) or "0 records"
        earlier = [f"{s['resumed']} done earlier, resumed"] if s["resumed"] else []
        earlier += [f"{s['changed']} changed since the earlier run, redone"] if s["changed"] else []
        earlier += [f"{s['removed']} no longer in the input or now unreadable, outputs removed"] if s["removed"] else []
        resumed = f" ({'; '.join(earlier)})" if earlier else ""
        psnr = f", PSNR {s['psnr_min']:.1f}-{s['psnr_max']:.1f} dB" if s["psnr_min"] is not None else ""
        say(
            f"{kinds} protected{resumed} ({s['written']} file(s) written), {s['copied']} copied, "
            f"{s['skipped']} skipped, {s['failed']} failed{psnr} in {seconds:.1f} s -> {output / s['manifest']}"
        )
    if s["failed"]:
        for e in manifest.entries:  # type: ignore[attr-defined]
            if e.status == "failed":
                say(f"failed {e.input}: {e.reason}")
        raise typer.Exit(code=3 if s["records"] else 2)


@app.command("merge-manifests")
def merge_manifests(
    folder: Annotated[Path, typer.Argument(help="Output folder holding manifest.part-K-of-N.json from every part.")],
) -> None:
    """Join the manifests of a sharded run into manifest.json, checking nothing is missing or done twice."""
    from ulmed.pipeline.merge import merge_manifests as merge

    start = time.perf_counter()
    manifest = merge(folder)
    summary_line(manifest, time.perf_counter() - start, folder)


__all__ = ["merge_manifests", "protect", "summary_line"]
