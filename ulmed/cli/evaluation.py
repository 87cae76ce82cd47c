"""The commands that train networks: ``ulmed evaluate`` (victims) and ``ulmed train-generator`` (UnSeg)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ulmed.cli.app import app, say, state
from ulmed.cli.flags import parse_protected, parse_sizes

#: ``--quick``: tiny settings that finish in about a minute on 2 CPU cores (explicit flags win).
QUICK = {"epochs": 5, "size": 32, "shape": "24,32,24", "limit": 24, "batch_size": 4}

_HELP = {
    "clean": ("Clean data set folder, laid out as ulmed protect reads it: images/ + masks/ (or labels/), "
              "NIfTI + labels/, or images with --labels. An index.csv with a split column fixes the split."),
    "masks": "Masks/label maps at the images' relative paths (default: masks/ or labels/ beside images/).",
    "labels": "Labels CSV of a classification set: columns image (relative path) and label (integer or name).",
    "subject": ("Regular expression over file name stems that finds the subject (group 1, else the match) "
                "[default: the whole stem]; a subject's files stay on one side of the split."),
    "test_fraction": "Share of subjects in the test split (ignored with a fixed index.csv split).",
    "kernel": "2D resize kernel: pil (antialiased bilinear), torch, cv-area or cv-linear (OpenCV).",
    "spacing": "Resample volumes to this voxel size first, X,Y,Z in mm [default: native].",
    "protected": "NAME=PATH of a protected copy of the train split (repeatable).",
    "victim": ("Victim network (repeatable): unet, segresnet, attention_unet, unetpp, unetr, densenet121, resnet18, "
               "nnunet-2d, nnunet-3d (nnU-Net v2 on the native files, its own plans and augmentation; "
               "pip install \"ulmed[nnunet]\")."),
    "iterations": "nnU-Net victims: training iterations per epoch (they train --epochs epochs).",
    "size": "2D images are letterboxed to SIZE x SIZE [default: 64].",
    "config": "UnSeg YAML config, e.g. configs/unseg/tiny.yaml.",
    "split": "Split of an index.csv beside the images (overrides the config).",
    "out": "Generator checkpoint to write, e.g. models/unseg_tiny.pt.",
    "defense": ("Trainer's defense (repeatable): none, flip_jitter, augmentation, nnunet-aug, resize:N[:kernel] "
                "(2D: reads the native files at N x N), resample:X,Y,Z (volumes), jpeg10, jpeg75, blur, lowpass, "
                "ueraser, mix0.5 ..."),
    "patch": ("Segmentation victims train on random patches of this size (D,H,W or H,W; MONAI "
              "RandCropByPosNegLabel) and are tested with sliding windows, as 3D trainers do [default: whole images]."),
    "quick": "Tiny settings (size 32, 5 epochs, 24 items): about a minute on 2 cores.",
    "learnability": ("Also measure sharpness-aware learnability per layer and the Unlearnable Distance to the "
                     "clean victim (slower: one forward+backward per layer)."),
    "sam_checkpoint": "Local official SAM checkpoint (vit_b/l/h builders), e.g. sam_vit_b_01ec64.pth.",
    "max_minutes": "Stop and save after this much training time (overrides the config).",
}


def quick_settings(quick: bool, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (epochs, batch_size, size, shape, limit); under ``--quick``, :data:`QUICK` fills the unset ones."""
    if not quick:
        return dict(given)
    return {key: value or QUICK[key] for key, value in given.items()}


@app.command()
def evaluate(  # one parameter per command-line option (typer)
    clean: Annotated[Path, typer.Option("--clean", help=_HELP["clean"])],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder; rerunning into it resumes.")],
    protected: Annotated[list[str] | None, typer.Option("--protected", help=_HELP["protected"])] = None,
    victim: Annotated[list[str] | None, typer.Option("--victim", help=_HELP["victim"])] = None,
    defense: Annotated[list[str] | None, typer.Option("--defense", help=_HELP["defense"])] = None,
    masks: Annotated[Path | None, typer.Option(help=_HELP["masks"])] = None,
    labels: Annotated[Path | None, typer.Option(help=_HELP["labels"])] = None,
    subject: Annotated[str | None, typer.Option(help=_HELP["subject"])] = None,
    test_fraction: Annotated[float, typer.Option(help=_HELP["test_fraction"])] = 0.2,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per victim [default: 10].")] = None,
    iterations: Annotated[int, typer.Option(help=_HELP["iterations"])] = 25,
    batch_size: Annotated[int | None, typer.Option(help="Batch size [default: 8].")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    size: Annotated[int | None, typer.Option(help=_HELP["size"])] = None,
    shape: Annotated[str | None, typer.Option(help="3D volume shape D,H,W [default: 40,56,40].")] = None,
    patch: Annotated[str | None, typer.Option(help=_HELP["patch"])] = None,
    kernel: Annotated[str, typer.Option(help=_HELP["kernel"])] = "pil",
    spacing: Annotated[str | None, typer.Option(help=_HELP["spacing"])] = None,
    limit: Annotated[int | None, typer.Option(help="At most N train and N test items.")] = None,
    victim_size: Annotated[str, typer.Option(help="small (CPU) or base.")] = "small",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads while training.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help=_HELP["quick"])] = False,
    learnability: Annotated[bool, typer.Option("--learnability", help=_HELP["learnability"])] = False,
) -> None:
    """Train victims on protected data, test them on clean data, write report.json/report.md and figures."""
    from ulmed.errors import ConfigError
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig

    given = {"epochs": epochs, "batch_size": batch_size, "size": size, "shape": shape, "limit": limit}
    s = quick_settings(quick, given)
    dhw = parse_sizes(s["shape"] or "40,56,40", "--shape needs three integers D,H,W")
    patch_size = parse_sizes(patch, "--patch needs integers D,H,W (volumes) or H,W (images)") if patch else None
    config = TrainConfig(epochs=s["epochs"] or 10, batch_size=s["batch_size"] or 8, lr=lr, device=state.device,
                         num_threads=threads, patch_size=patch_size)
    side = s["size"] or 64
    try:
        mm = tuple(float(v) for v in spacing.replace("x", ",").split(",")) if spacing else None
    except ValueError:
        raise ConfigError(f"--spacing needs three numbers X,Y,Z in mm, got {spacing!r}") from None
    report = run_evaluation(
        clean, parse_protected(protected or []), output, masks=masks, labels=labels, subject=subject,
        test_fraction=test_fraction, victims=victim or ["unet"], defenses=defense or ["none"], train_config=config,
        victim_size=victim_size, size=(side, side), shape=dhw, kernel=kernel, spacing=mm, train_limit=s["limit"],
        test_limit=s["limit"], seed=state.seed, learnability=learnability, iterations=iterations,
        progress=say if state.verbosity >= 0 else None,
    )
    if state.verbosity >= 0:
        say(report["summary"])


@app.command("train-generator")
def train_generator(  # one parameter per command-line option (typer)
    data: Annotated[Path, typer.Option("--data", help="Training images (PNG/TIFF/JPEG, grey or RGB).")],
    masks: Annotated[Path, typer.Option("--masks", help="Their masks, at the same relative paths.")],
    out: Annotated[Path, typer.Option("--out", help=_HELP["out"])],
    config: Annotated[Path, typer.Option(help=_HELP["config"])] = Path("configs/unseg/tiny.yaml"),
    sam_checkpoint: Annotated[Path | None, typer.Option(help=_HELP["sam_checkpoint"])] = None,
    rounds: Annotated[int | None, typer.Option(help="Bilevel rounds (overrides the config).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help=_HELP["max_minutes"])] = None,
    split: Annotated[str | None, typer.Option(help=_HELP["split"])] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N training images.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
) -> None:
    """Train the UnSeg universal noise generator (bilevel, against a scratch SAM surrogate); torchrun for DDP."""
    from ulmed.segmentation.config import UnsegConfig
    from ulmed.segmentation.train import train_generator as train

    cfg = UnsegConfig.from_yaml(config, rounds=rounds, max_minutes=max_minutes, split=split, limit=limit,
                                threads=threads)
    result = train(data, masks, cfg, out, seed=state.seed, device=state.device, sam_checkpoint=sam_checkpoint,
                   say=say if state.verbosity >= 0 else None)
    if state.verbosity >= 0:
        steps = ", ".join(f"{k} {v}" for k, v in result["steps"].items())
        say(f"generator trained on {result['images']} image(s) ({steps} steps) in {result['wall_seconds']:.0f} s "
            f"-> {result['out']}")


__all__ = ["QUICK", "evaluate", "quick_settings", "train_generator"]
