"""The ``ulmed`` command line: thin, one API call per subcommand.

Errors that ulmed raises on purpose are printed as one line naming the file and what to
do, with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ulmed.core.method import DEFAULT_METHOD
from ulmed.errors import UlmedError, os_reason

T = TypeVar("T")
stderr = Console(stderr=True)
stdout = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None,  # plain help: "ulmed[deid]" stays as written, not read as markup
                  help="Protect medical images and segmentation data sets with unlearnable perturbations.\n\n"
                       "The options below may also follow the subcommand: ulmed protect -i a -o b --seed 1 -q")


class _State:
    device = "auto"
    seed = 0
    verbosity = 0
    debug = False


state = _State()


def _print_version(value: bool) -> None:
    """``--version``: print ``ulmed X.Y.Z`` and stop."""
    if value:
        from ulmed import __version__

        print(f"ulmed {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seed: Annotated[int, typer.Option(help="Run seed; the same seed gives the same output.")] = 0,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More messages (repeat for more).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bar.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of errors, and the libraries' warnings.")] = False,
) -> None:
    """Global options, before or after the subcommand: ulmed --device cpu protect ... or ulmed protect ... --device cpu."""
    state.device, state.seed, state.debug = device, seed, debug
    from ulmed.io.notices import set_debug

    set_debug(debug)  # library warnings reach the terminal only with --debug (else: the manifest)
    state.verbosity = -1 if quiet else verbose
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr, force=True)


def _say(message: str) -> None:
    """One plain line on stderr (no wrapping, no markup), safe for logs and scripts."""
    print(message, file=sys.stderr, flush=True)


def _progress(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    """A rich progress bar on stderr, shown only on a terminal and when not quiet."""
    if state.verbosity < 0 or not sys.stderr.isatty():
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _apply_config(ctx: typer.Context, config: Path | None, values: dict[str, object]) -> dict[str, object]:
    """Fill options the user did not give on the command line from a YAML config file."""
    if config is None:
        return values
    from ulmed.pipeline.config import load_config

    data = load_config(config, allowed=set(values))
    for key, value in data.items():
        source = ctx.get_parameter_source(key)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            values[key] = value
    return values


def _parse_sets(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; values are read as YAML scalars (numbers, booleans)."""
    import yaml

    from ulmed.errors import ConfigError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@app.command()
def protect(
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", "-i", help="DICOM export, NIfTI file/folder, image folder or data set.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (outside the input).")],
    method: Annotated[str, typer.Option(help="Protection method (see `ulmed methods`).")] = DEFAULT_METHOD,
    eps: Annotated[str, typer.Option(help="L-inf budget: 8/255, 0.03, or native units such as 20HU.")] = "8/255",
    masks: Annotated[Optional[Path], typer.Option(help="Masks folder matched to the images by relative path.")] = None,
    dicom_encoding: Annotated[str, typer.Option(help="DICOM output: explicit, rle, jpegls or j2k (lossless only).")] = "explicit",
    skip_non_image: Annotated[bool, typer.Option("--skip-non-image", help="Leave SR/SEG/RTSTRUCT/PR... out instead of copying them.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad input instead of skipping it.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty output folder.")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="CSV of class labels by relative path (classification).")] = None,
    rho: Annotated[Optional[float], typer.Option(help="SALM: fraction of positions that may change (L0 budget).")] = None,
    augment: Annotated[Optional[str], typer.Option(help="em/salm: trainer augmentation to optimise against: none, flip_jitter, standard, robust or armor.")] = None,
    objective: Annotated[Optional[str], typer.Option(help="em/salm: PGD objective, loss (error-minimising) or bayes (Bayes-error ascent).")] = None,
    grid: Annotated[Optional[str], typer.Option(help="lsp: the trainer's working grid: auto (default; size:128 for 2D images), native, or size:N[,M...] (a 2D trainer that resizes to N x N).")] = None,
    fit: Annotated[Optional[str], typer.Option(help="lsp with --grid size:N: how the trainer fits an image into N x N, letterbox or stretch.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method option KEY=VALUE (repeatable), e.g. --set rounds=5.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file with option values (e.g. configs/protect/salm.yaml); flags win.")] = None,
    deidentify: Annotated[bool, typer.Option("--deidentify", help="De-identify DICOM with dicognito first, keyed by the secret in $ULMED_DEID_KEY (pip install \"ulmed[deid]\").")] = False,
    chunk_size: Annotated[int, typer.Option(help="em/salm: records per fit; the surrogate is carried from chunk to chunk.")] = 1000,
    num_parts: Annotated[int, typer.Option(help="Split the work into N parts (Slurm array, Kubernetes jobs); then ulmed merge-manifests.")] = 1,
    part_id: Annotated[int, typer.Option(help="The part this process does, 0..N-1.")] = 0,
    engine: Annotated[str, typer.Option(help="local or ray (pip install \"ulmed[ray]\").")] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes (local) or concurrent Ray tasks.")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster (engine ray); default: start a local one.")] = None,
    metrics: Annotated[str, typer.Option(help="Manifest imperceptibility: sampled (SSIM over about 262k window positions per record, the share stated), full, or none (no SSIM); PSNR and norms are exact.")] = "sampled",
) -> None:
    """Protect every image under INPUT and write valid files of the same kind to OUTPUT.

    Rerunning the same command into the same OUTPUT resumes an interrupted run.
    """
    from ulmed.pipeline.method_options import check_method_options
    from ulmed.pipeline.protect import protect_path

    start = time.perf_counter()
    opts = _apply_config(ctx, config, {"method": method, "eps": eps, "dicom_encoding": dicom_encoding,
                                       "skip_non_image": skip_non_image, "masks": masks, "labels": labels,
                                       "chunk_size": chunk_size, "options": {}})
    method_options = {**opts.pop("options"), **_parse_sets(set_ or [])}  # type: ignore[dict-item]
    for key, value in (("rho", rho), ("augment", augment), ("objective", objective), ("grid", grid), ("fit", fit)):
        if value is not None:
            method_options[key] = value
    method_options = check_method_options(str(opts["method"]), method_options)
    manifest = protect_path(
        input, output, seed=state.seed, device=state.device, strict=strict, overwrite=overwrite,
        progress=_progress, method_options=method_options, deidentify=deidentify, num_parts=num_parts,
        part_id=part_id, engine=engine, workers=workers, ray_address=ray_address, metrics=metrics, **opts,  # type: ignore[arg-type]
    )
    _summary_line(manifest, time.perf_counter() - start, output)


def _summary_line(manifest: object, seconds: float, output: Path) -> None:
    """The closing line of a run: records by kind, resumed, copied, skipped, failed, PSNR, time."""
    from ulmed.pipeline.protect import summarize

    s = summarize(manifest)  # type: ignore[arg-type]
    if state.verbosity >= 0:
        kinds = ", ".join(f"{n} {k}" for k, n in s["by_kind"].items()) or "0 records"
        earlier = [f"{s['resumed']} done earlier, resumed"] if s["resumed"] else []
        earlier += [f"{s['changed']} changed since the earlier run, redone"] if s["changed"] else []
        earlier += [f"{s['removed']} no longer in the input, outputs removed"] if s["removed"] else []
        resumed = f" ({'; '.join(earlier)})" if earlier else ""
        psnr = f", PSNR {s['psnr_min']:.1f}-{s['psnr_max']:.1f} dB" if s["psnr_min"] is not None else ""
        _say(
            f"{kinds} protected{resumed} ({s['written']} file(s) written), {s['copied']} copied, "
            f"{s['skipped']} skipped, {s['failed']} failed{psnr} in {seconds:.1f} s -> {output / s['manifest']}"
        )
    if s["failed"]:
        for e in manifest.entries:  # type: ignore[attr-defined]
            if e.status == "failed":
                _say(f"failed {e.input}: {e.reason}")
        raise typer.Exit(code=3 if s["records"] else 2)


@app.command("merge-manifests")
def merge_manifests(
    folder: Annotated[Path, typer.Argument(help="Output folder holding manifest.part-K-of-N.json from every part.")],
) -> None:
    """Join the manifests of a sharded run into manifest.json, checking nothing is missing or done twice."""
    from ulmed.pipeline.merge import merge_manifests as merge

    start = time.perf_counter()
    manifest = merge(folder)
    _summary_line(manifest, time.perf_counter() - start, folder)


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="File or folder to inspect.")],
    masks: Annotated[Optional[Path], typer.Option(help="Masks folder matched by relative path.")] = None,
) -> None:
    """List what `protect` would read: series or files, shape, spacing, modality, dtype, range.

    On a terminal it prints a table; piped or redirected, tab-separated lines (a header, then
    one line per record) with every key whole. Bad and skipped inputs follow, one per line.

    Exit codes, for a pre-flight check: 0 when every input is readable, 3 when some inputs are
    bad, 2 when none is readable or PATH cannot be used.
    """
    from ulmed.pipeline.info import COLUMNS, describe, exit_code, table_rows

    d = describe(path, masks)
    rows = table_rows(d)
    if sys.stdout.isatty():
        table = Table(title=f"{len(rows)} record(s) under {path}")
        for col in COLUMNS:
            table.add_column(col, overflow="fold")  # wrap long keys, never cut them
        for row in rows:
            table.add_row(*row)
        stdout.print(table, markup=False)
    else:
        for row in (COLUMNS, *rows):
            print("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))
    lines = [f"{d['copied']} file(s) would be copied unchanged ({d['non_image_dicom']} non-image DICOM)"]
    lines += [f"bad: {key}: {reason}" for key, reason in d["bad"]]
    lines += [f"skipped: {key}: {reason}" for key, reason in d["skipped"]]
    print("\n".join(lines), flush=True)  # plain lines: never wrapped or cut
    code = exit_code(d)
    if code:
        raise typer.Exit(code=code)


@app.command()
def methods() -> None:
    """List the protection methods."""
    from ulmed.pipeline.protect import available_methods

    for name, doc in available_methods().items():
        stdout.print(f"{name:10s} {doc}", markup=False, highlight=False)


#: ``--quick``: tiny settings that finish in about a minute on 2 CPU cores (explicit flags win).
QUICK = {"epochs": 5, "size": 32, "shape": "24,32,24", "limit": 24, "batch_size": 4}


def _parse_protected(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named after its folder) to a dict."""
    from ulmed.errors import ConfigError

    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (Path(item).name, item)
        if not name or not path:
            raise ConfigError(f"--protected needs NAME=PATH, got {item!r}")
        if name in out:
            raise ConfigError(f"--protected name {name!r} is given twice; use distinct names")
        out[name] = Path(path)
    return out


@app.command()
def evaluate(
    clean: Annotated[Path, typer.Option("--clean", help="Clean data set: folder with index.csv (split column) or pneumoniamnist.npz.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder; rerunning into it resumes.")],
    protected: Annotated[Optional[list[str]], typer.Option("--protected", help="NAME=PATH of a protected copy of the train split (repeatable).")] = None,
    victim: Annotated[Optional[list[str]], typer.Option("--victim", help="Victim network (repeatable): unet, segresnet, attention_unet, unetpp, unetr, densenet121, resnet18.")] = None,
    defense: Annotated[Optional[list[str]], typer.Option("--defense", help="Trainer's defense (repeatable): none, augmentation, flip_jitter, jpeg75, blur, mix0.5 ...")] = None,
    dataset: Annotated[str, typer.Option(help="auto, hc18 (2D images + masks), hippocampus (NIfTI + labels) or pneumonia.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs per victim [default: 10].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size [default: 8].")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    size: Annotated[Optional[int], typer.Option(help="2D images are letterboxed to SIZE x SIZE [default: 64].")] = None,
    shape: Annotated[Optional[str], typer.Option(help="3D volume shape D,H,W [default: 40,56,40].")] = None,
    patch: Annotated[Optional[str], typer.Option(help="Segmentation victims train on random patches of this size (D,H,W or H,W; MONAI RandCropByPosNegLabel) and are tested with sliding windows, as 3D trainers do [default: whole images].")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most N train and N test items.")] = None,
    victim_size: Annotated[str, typer.Option(help="small (CPU) or base.")] = "small",
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads while training.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings (size 32, 5 epochs, 24 items): about a minute on 2 cores.")] = False,
    learnability: Annotated[bool, typer.Option("--learnability", help="Also measure sharpness-aware learnability per layer and the Unlearnable Distance to the clean victim (slower: one forward+backward per layer).")] = False,
) -> None:
    """Train victims on protected data, test them on clean data, write report.json/report.md and figures."""
    from ulmed.errors import ConfigError
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig

    if quick:
        epochs, batch_size = epochs or QUICK["epochs"], batch_size or QUICK["batch_size"]  # type: ignore[assignment]
        size, shape, limit = size or QUICK["size"], shape or QUICK["shape"], limit or QUICK["limit"]  # type: ignore[assignment]
    def sizes(text: str, what: str) -> tuple[int, ...]:
        """``"24,32,24"`` or ``"24x32x24"`` -> integers; a clear error otherwise."""
        try:
            return tuple(int(v) for v in text.replace("x", ",").split(","))
        except ValueError:
            raise ConfigError(f"{what}, got {text!r}") from None

    dhw = sizes(shape or "40,56,40", "--shape needs three integers D,H,W")
    patch_size = sizes(patch, "--patch needs integers D,H,W (volumes) or H,W (images)") if patch else None
    config = TrainConfig(epochs=epochs or 10, batch_size=batch_size or 8, lr=lr, device=state.device, num_threads=threads,
                         patch_size=patch_size)
    report = run_evaluation(
        clean, _parse_protected(protected or []), output, dataset=dataset, victims=victim or ["unet"],
        defenses=defense or ["none"], train_config=config, victim_size=victim_size, size=(size or 64, size or 64),
        shape=dhw, train_limit=limit, test_limit=limit, seed=state.seed, learnability=learnability, progress=_say if state.verbosity >= 0 else None,
    )
    if state.verbosity >= 0:
        _say(report["summary"])


@app.command("train-generator")
def train_generator(
    data: Annotated[Path, typer.Option("--data", help="Training images (PNG/TIFF/JPEG, grey or RGB).")],
    masks: Annotated[Path, typer.Option("--masks", help="Their masks, at the same relative paths.")],
    out: Annotated[Path, typer.Option("--out", help="Generator checkpoint to write, e.g. models/unseg_tiny.pt.")],
    config: Annotated[Path, typer.Option(help="UnSeg YAML config, e.g. configs/unseg/tiny.yaml.")] = Path("configs/unseg/tiny.yaml"),
    sam_checkpoint: Annotated[Optional[Path], typer.Option(help="Local official SAM checkpoint (vit_b/l/h builders), e.g. sam_vit_b_01ec64.pth.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Bilevel rounds (overrides the config).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop and save after this much training time (overrides the config).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of an index.csv beside the images (overrides the config).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most N training images.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
) -> None:
    """Train the UnSeg universal noise generator (bilevel, against a scratch SAM surrogate); torchrun for DDP."""
    from ulmed.segmentation.config import UnsegConfig
    from ulmed.segmentation.train import train_generator as train

    cfg = UnsegConfig.from_yaml(config, rounds=rounds, max_minutes=max_minutes, split=split, limit=limit, threads=threads)
    result = train(data, masks, cfg, out, seed=state.seed, device=state.device, sam_checkpoint=sam_checkpoint,
                   say=_say if state.verbosity >= 0 else None)
    if state.verbosity >= 0:
        steps = ", ".join(f"{k} {v}" for k, v in result["steps"].items())
        _say(f"generator trained on {result['images']} image(s) ({steps} steps) in {result['wall_seconds']:.0f} s -> {result['out']}")


@app.command()
def release(
    input: Annotated[Path, typer.Option("--input", "-i", help="Data set: images/ + masks/ (or labels/), split files ...")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Release folder (outside the input).")],
    method: Annotated[str, typer.Option(help="Protection method (see `ulmed methods`).")] = DEFAULT_METHOD,
    eps: Annotated[str, typer.Option(help="L-inf budget: 8/255, 0.03, or native units such as 20HU.")] = "8/255",
    masks: Annotated[Optional[Path], typer.Option(help="Masks folder matched to the images by relative path.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty release folder.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method option KEY=VALUE (repeatable), e.g. --set rho=0.1.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (local) or concurrent Ray tasks.")] = 1,
    engine: Annotated[str, typer.Option(help="local or ray (pip install \"ulmed[ray]\").")] = "local",
    deidentify: Annotated[bool, typer.Option("--deidentify", help="De-identify DICOM with dicognito first, keyed by the secret in $ULMED_DEID_KEY (pip install \"ulmed[deid]\").")] = False,
    size: Annotated[Optional[int], typer.Option(help="ML-ready release: resample images (antialiased) and masks (nearest) to N x N and protect on that grid (2D data sets).")] = None,
    fit: Annotated[str, typer.Option(help="With --size: letterbox (aspect kept, padded) or stretch.")] = "letterbox",
) -> None:
    """Protect a segmentation data set into a release folder with DATACARD.md and SHA256SUMS (rerun to resume)."""
    from ulmed.pipeline.method_options import check_method_options
    from ulmed.pipeline.release import release_dataset

    report = release_dataset(
        input, output, method=method, eps=eps, seed=state.seed, device=state.device, masks=masks,
        overwrite=overwrite, method_options=check_method_options(method, _parse_sets(set_ or [])), progress=_progress, workers=workers, engine=engine,
        deidentify=deidentify, size=size, fit=fit,
    )
    psnr = report.spread("psnr")
    psnr_text = f", PSNR {psnr[0]:.2f}-{psnr[2]:.2f} dB" if psnr is not None else ""
    if state.verbosity >= 0:
        _say(f"{report.records} record(s) protected{psnr_text}, {report.files} file(s) in SHA256SUMS -> {report.datacard}")
    for e in report.failed:
        _say(f"failed {e.input}: {e.reason}")
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
        _say(line)
    if not report.ok:
        raise typer.Exit(code=1)
    if state.verbosity >= 0:
        _say(f"OK: {report.verified} files verified")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn usage and ulmed errors into one line and an exit code.

    Global options may also follow the subcommand (:func:`ulmed.cli_argv.hoist_global_options`).
    """
    from ulmed.cli_argv import click_exceptions, hoist_global_options, usage_line

    args = sys.argv[1:] if argv is None else list(argv)
    group = typer.main.get_command(app)
    click_errors = click_exceptions()
    try:
        code = group.main(args=hoist_global_options(args, group), prog_name="ulmed", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click_errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # a bare `ulmed`: the help
            print(exc.ctx.get_help())
        else:
            _say(usage_line(exc))
        return exc.exit_code
    except click_errors.ClickException as exc:  # not a usage error (a file click could not open ...)
        _say(f"ulmed: error: {' '.join(exc.format_message().split())}")
        return exc.exit_code
    except typer.Abort:
        _say("ulmed: aborted")
        return 1
    except UlmedError as exc:
        if state.debug or "--debug" in args:
            raise
        _say(f"error: {exc}")
        return 2
    except OSError as exc:  # one that no ulmed code turned into an UlmedError: still one line
        if state.debug or "--debug" in args:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"error: {where}{os_reason(exc)}; check the path and free space (--debug shows the traceback)")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; finished outputs are complete and journalled: rerun the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
