"""PneumoniaMNIST classification: clean vs protected training sets, DenseNet121 victim.

The data set is one ``.npz`` of 28 x 28 chest X-rays with labels (normal / pneumonia); it is
written out as a data set folder of PNGs with ``labels.csv`` and an ``index.csv`` that keeps the
re-split's fixed split (:func:`benchmark_data.pneumonia_folder`). The train split alone is
protected with ``protect_path`` (``ulmed protect --labels labels.csv``: class labels as targets)
and ``run_evaluation`` (``ulmed evaluate``) trains the victims on each protected copy and tests
on the clean test split, reading the folders like any data set.

Methods: random (control), lsp (one code per class: the classic LSP setting), em (sample-wise)
and em class-wise (one noise per class).

Usage:
    python benchmarks/cls_pneumonia.py --quick
        # 400 train / 200 test, DenseNet121, 4 epochs, no em_classwise (under 5 min)
    python benchmarks/cls_pneumonia.py
        # 2428 train / 468 test, DenseNet121 + ResNet18, 5 epochs (within an hour)

Writes benchmarks/results/cls_pneumonia[_quick]/ (report.json, report.md, figures).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark_data import pneumonia_folder
from grid_common import named_methods, parse_mode_args, select_mode

MODES = {
    "quick": {
        "train": 400,
        "test": 200,
        "epochs": 4,
        "victims": ["densenet121"],
        "skip": ["em_classwise"],
        "min_min": {"rounds": 2, "train_steps": 15, "pgd_steps": 6, "batch_size": 32},
    },
    "full": {
        "train": None,
        "test": None,
        "epochs": 5,
        "victims": ["densenet121", "resnet18"],
        "min_min": {"rounds": 6, "train_steps": 40, "pgd_steps": 10, "batch_size": 32},
    },
}
DEFENSES = ["none", "augmentation", "jpeg75", "mix0.5"]
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "lsp": ("lsp", {}),
    "em": ("em", {"min_min": True}),
    "em_classwise": ("em", {"min_min": True, "classwise": True}),
}
#: ``--robust``: the robust options of issue 7 beside plain em (Bayes error is aimed at mixing).
ROBUST: dict[str, tuple[str, dict[str, Any]]] = {
    "em": ("em", {"min_min": True}),
    "em_eot": ("em", {"min_min": True, "augment": "standard", "step_schedule": "dynamic"}),
    "em_armor": ("em", {"min_min": True, "augment": "armor", "step_schedule": "dynamic"}),
    "em_bayes": ("em", {"min_min": True, "objective": "bayes"}),
}
#: Protections that run only when named with ``--methods`` (lsp_nyquist: one Nyquist pattern per class;
#: lsp_blocks: the random block patterns; ``lsp`` is the default style, Nyquist for these 2D images).
EXTRA: dict[str, tuple[str, dict[str, Any]]] = {
    "lsp_nyquist": ("lsp", {"style": "nyquist"}),
    "lsp_blocks": ("lsp", {"style": "blocks"}),
}


def _protect(
    train_only: Path, dst: Path, method: str, options: dict[str, Any], eps: str, seed: int, min_min: dict[str, Any]
) -> float:
    """Protect the train-only folder as ``ulmed protect --labels`` does; the wall time."""
    from ulmed.pipeline.protect import protect_path

    opts = {k: v for k, v in options.items() if k != "min_min"}
    if options.get("min_min"):
        opts.update(min_min)
    start = time.perf_counter()
    manifest = protect_path(train_only, dst, method=method, eps=eps, seed=seed, device="cpu",
                            labels=train_only / "labels.csv", method_options=opts)
    choice = manifest.fit.get("augment_choice")
    if choice:
        print(f"  {method} augmentation choice: {choice}", flush=True)
    return time.perf_counter() - start


def main() -> None:
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig

    args, out = parse_mode_args(__doc__, "cls_pneumonia")
    m = select_mode(MODES, args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        limits = {"train": m["train"], "test": m["test"]}
        clean = pneumonia_folder(tmp / "clean", limits=limits)
        train_only = pneumonia_folder(tmp / "train_only", limits=limits, splits=("train",))
        protected = {}
        rows = ROBUST if args.robust else {k: v for k, v in METHODS.items() if k not in m.get("skip", [])}
        if args.methods:
            rows = named_methods(args.methods, {**METHODS, **ROBUST, **EXTRA})
        for name, (method, options) in rows.items():
            wall = _protect(train_only, tmp / name, method, options, args.eps, args.seed, m["min_min"])
            print(f"protected with {name}: {wall:.1f} s", flush=True)
            protected[name] = tmp / name
        if out.exists():
            shutil.rmtree(out)
        config = TrainConfig(epochs=m["epochs"], batch_size=32, lr=1e-3, seed=args.seed, device="cpu", num_threads=2)
        run_evaluation(
            clean,
            protected,
            out,
            size=(28, 28),  # the native size: no resize
            victims=m["victims"],
            defenses=m.get("defenses", DEFENSES),
            train_config=config,
            seed=args.seed,
            progress=lambda line: print(line, flush=True),
        )
    print((out / "report.md").read_text())
    print(f"wall time {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
