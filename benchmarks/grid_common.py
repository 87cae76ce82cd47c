"""What the data-set benchmarks share: protect a train-only copy per method, then run the grid.

``seg2d_hc18.py`` and ``seg3d_hippocampus.py`` differ only in how they lay out their working
copy; both call :func:`protect_and_evaluate`. All three grid benchmarks (with
``cls_pneumonia.py``) read their flags with :func:`parse_mode_args`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def data_set_copy(
    dst: Path, source: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = ("image", "mask"),
    index: bool = True,
) -> Path:
    """A data-set folder holding only ``rows`` of ``source``'s index, byte for byte, with its index.csv.

    Args:
        dst: New folder (must not exist).
        source: Data-set folder the rows' paths are relative to.
        rows: Rows of ``source``'s index.csv to keep.
        columns: The columns holding file paths (``("image", "label")`` for volumes and label maps).
        index: Write the rows as ``index.csv`` (False: a plain folder, as a data owner has one).
    """
    import csv

    for r in rows:
        for column in columns:
            (dst / r[column]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / r[column], dst / r[column])
    if not index:
        return dst
    with open(dst / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def parse_mode_args(doc: str, stem: str) -> tuple[argparse.Namespace, Path]:
    """The flags every grid benchmark takes (``--quick``, ``--eps``, ``--seed``, ...) and its result folder."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small mode: minutes on 2 cores")
    parser.add_argument("--eps", default="auto",
                        help="budget (default auto: 8/255 at >= 38 dB on images, 16/255 at >= 40 dB on volumes); "
                             "result folders without a budget suffix are from 8/255, auto adds _auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--learnability",
        action="store_true",
        help="also measure SAL per layer and the Unlearnable Distance of every cell",
    )
    parser.add_argument("--victims", default="", help="comma-separated victims instead of the mode's own")
    parser.add_argument(
        "--robust",
        action="store_true",
        help="compare the robust options (EOT, ARMOR selection, Bayes objective) instead of the baselines",
    )
    parser.add_argument(
        "--patch",
        default="",
        help="segmentation victims train on random patches of this size (e.g. 24x32x24), or 'none' "
        "for whole images; default: the mode's own",
    )
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated protections instead of the baselines (or --robust set): any of "
        "the BASELINES, ROBUST and EXTRA names, e.g. unseg",
    )
    parser.add_argument(
        "--defenses",
        default="",
        help="comma-separated defenses instead of the mode's own, e.g. none,flip_jitter,aug-shift",
    )
    parser.add_argument("--epochs", type=int, default=0, help="victim training epochs instead of the mode's own")
    args = parser.parse_args()
    suffix = ("_robust" if args.robust else "") + ("_quick" if args.quick else "")
    suffix += f"_{args.methods.replace(',', '-')}" if args.methods else ""
    suffix += f"_{args.defenses.replace(',', '-').replace(':', '=')}" if args.defenses else ""
    suffix += {"": "", "none": "_whole"}.get(args.patch, "_patch")
    suffix += {"8/255": "", "auto": "_auto"}.get(args.eps, f"_eps{args.eps.replace('/', '-')}")
    suffix += f"_e{args.epochs}" if args.epochs else ""
    return args, REPO / "benchmarks/results" / f"{stem}{suffix}"


def select_mode(modes: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The settings of the chosen mode (``--quick`` or full), with ``--victims``,
    ``--defenses``, ``--patch`` and ``--epochs`` applied."""
    mode = dict(modes["quick" if args.quick else "full"])
    if getattr(args, "epochs", 0):
        mode["epochs"] = args.epochs
    if args.victims:
        mode["victims"] = [v.strip() for v in args.victims.split(",") if v.strip()]
    if args.defenses:
        # a comma before a digit continues a defense's numbers (resample:1.5,1.5,1.5)
        mode["defenses"] = [d.strip() for d in re.split(r",(?![\d.])", args.defenses) if d.strip()]
    if args.patch == "none":
        mode["patch"] = None
    elif args.patch:
        mode["patch"] = tuple(int(v) for v in args.patch.lower().replace(",", "x").split("x"))
    return mode


#: protection name -> (registered method, its options); the min-min methods get the mode's
#: schedule on top.
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "lsp": ("lsp", {}),
    "em": ("em", {}),
    "salm": ("salm", {"rho": 0.1}),
}
#: The robust options of issue 7 beside their plain counterparts.
ROBUST: dict[str, tuple[str, dict[str, Any]]] = {
    "em": ("em", {}),
    "em_eot": ("em", {"augment": "standard", "step_schedule": "dynamic"}),
    "em_armor": ("em", {"augment": "armor", "step_schedule": "dynamic"}),
    "em_bayes": ("em", {"objective": "bayes"}),
    "salm": ("salm", {"rho": 0.1}),
    "salm_eot": ("salm", {"rho": 0.1, "augment": "standard", "step_schedule": "dynamic"}),
}
#: Protections that run only when named with ``--methods`` (UnSeg: the shipped generator,
#: prompted by each item's mask; 8/255 inside, 2/255 outside; lsp_nyquist / lsp_blocks: lsp with
#: one style for every record, where ``lsp`` is the default ``auto``; lsp_psnr40: lsp with a 40 dB
#: PSNR floor, with ``--eps`` as its cap).
EXTRA: dict[str, tuple[str, dict[str, Any]]] = {
    "unseg": ("unseg", {}),
    "lsp_nyquist": ("lsp", {"style": "nyquist"}),
    "lsp_blocks": ("lsp", {"style": "blocks"}),
    "lsp_offset": ("lsp", {"style": "offset"}),
    "lsp_psnr40": ("lsp", {"psnr": 40}),
}
MIN_MIN = ("em", "salm")


def select_methods(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    """The protections to compare: ``--methods``, else ROBUST with ``--robust``, else BASELINES."""
    if not args.methods:
        return ROBUST if args.robust else BASELINES
    return named_methods(args.methods, {**BASELINES, **ROBUST, **EXTRA})


def named_methods(spec: str, catalogue: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The protections named in the comma-separated ``spec``, looked up in ``catalogue`` (exits on unknown names)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"unknown protection(s) {', '.join(unknown)}; choose from {', '.join(catalogue)}")
    return {n: catalogue[n] for n in names}


def protect_and_evaluate(
    clean: Path,
    train_only: Path,
    tmp: Path,
    out: Path,
    *,
    mode: dict[str, Any],
    defenses: Sequence[str],
    eps: str,
    seed: int,
    batch_size: int,
    methods: dict[str, tuple[str, dict[str, Any]]] | None = None,
    learnability: bool = False,
    **loader: Any,
) -> None:
    """``protect_path`` every method on ``train_only``, then ``run_evaluation`` into ``out``.

    Args:
        clean: Clean working copy (train and test splits, index.csv).
        train_only: The same train split alone: what the data owner protects.
        tmp: Scratch folder for the protected copies.
        out: Report folder (replaced).
        mode: The benchmark mode's settings (``epochs``, ``victims``, ``min_min``; ``patch``: train
            on random patches of this size and infer with sliding windows).
        defenses: Trainer's defenses.
        eps: Budget.
        seed: Seed of protection and victims.
        batch_size: Victim batch size.
        methods: Protection name -> (method, options); default :data:`BASELINES`.
        learnability: Measure SAL/UD in every cell (``ulmed evaluate --learnability``).
        **loader: ``size=`` or ``shape=`` for :func:`ulmed.eval.grid.run_evaluation`.
    """
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig
    from ulmed.pipeline.protect import protect_path, summarize

    protected = {}
    timings = {}
    for name, (method, extra) in (methods or BASELINES).items():
        t0 = time.perf_counter()
        opts: dict[str, Any] = {**(mode["min_min"] if method in MIN_MIN else {}), **extra}
        manifest = protect_path(
            train_only, tmp / name, method=method, eps=eps, seed=seed, device="cpu", method_options=opts
        )
        s = summarize(manifest)
        timings[name] = round(time.perf_counter() - t0, 1)
        print(
            f"protected with {name}: {s['records']} items in {timings[name]} s, "
            f"PSNR {s['psnr_min']:.1f}-{s['psnr_max']:.1f} dB",
            flush=True,
        )
        protected[name] = tmp / name
        choice = manifest.fit.get("augment_choice")
        if choice:  # ARMOR's choice, for the record
            print(f"  {name} augmentation choice: {choice}", flush=True)
            timings[f"{name}_augment_choice"] = choice
    if out.exists():
        shutil.rmtree(out)
    config = TrainConfig(
        epochs=mode["epochs"],
        batch_size=batch_size,
        lr=1e-3,
        seed=seed,
        device="cpu",
        num_threads=2,
        patch_size=mode.get("patch"),
    )
    run_evaluation(
        clean,
        protected,
        out,
        victims=mode["victims"],
        defenses=defenses,
        train_config=config,
        seed=seed,
        learnability=learnability,
        progress=lambda line: print(line, flush=True),
        **loader,
    )
    (out / "protect_times.json").write_text(json.dumps(timings, indent=2))
    print((out / "report.md").read_text())
    print("protection wall time (s):", timings)
