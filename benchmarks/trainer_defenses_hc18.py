"""The trainers a data owner meets, as cells of ``ulmed evaluate``: HC18 native-size files, resized and augmented.

A data owner protects the HC18 train split as it is (native-size PNGs, about 400 x 270 px)
with ``protect_path`` (the code of ``ulmed protect``, default method unless ``--methods``).
``ulmed evaluate`` (:func:`ulmed.eval.grid.run_evaluation`, the product's own grid) then trains
a MONAI UNet on the clean and on each protected train split under each trainer's defense and
tests it on the clean test split:

* ``none``: the victim letterboxes the files to ``--size`` (128) with Pillow (antialiased);
* ``resize:64``, ``resize:256``, ``resize:128:cv-area``, ``resize:128:torch``: trainers that read
  the native files at another working size or with another kernel (OpenCV INTER_AREA, torch
  antialiased); each is compared with the clean victim read the same way;
* ``flip_jitter``, ``nnunet-aug`` (nnU-Net v2's augmentation probabilities), ``jpeg10``
  (image shortcut squeezing), ``lowpass`` and ``ueraser`` (UEraser's plasma intensity fields).

Usage:
    python benchmarks/trainer_defenses_hc18.py               # 200 train images, 15 epochs, size 128
    python benchmarks/trainer_defenses_hc18.py --quick       # 48 train images, 4 epochs, size 64: minutes
    python benchmarks/trainer_defenses_hc18.py --methods lsp,em --defenses none,nnunet-aug

Writes benchmarks/results/trainer_defenses_hc18[_quick][_TAG].json (ratios, timings, settings) and the
full evaluation report (report.md, figures) under benchmarks/results/trainer_defenses_hc18[_quick][_TAG]/.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grid_common import data_set_copy

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"
DEFENSES = ("none,resize:64,resize:256,resize:128:cv-area,resize:128:torch,flip_jitter,nnunet-aug,jpeg10,lowpass,"
            "ueraser")
#: protection name -> (method, options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lsp": ("lsp", {}),
    "em": ("em", {"rounds": 3, "train_steps": 10, "pgd_steps": 6}),
    "random": ("random", {}),
    "lsp_offset": ("lsp", {"style": "offset"}),  # each class lifted by a constant (measured: no effect)
    "lsp_cell3": ("lsp", {"cell": 3}),  # the working-grid code with coarser steps (period 6, 8 at 128 px)
    "lsp_cell4": ("lsp", {"cell": 4}),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 train images, 4 epochs, size 64")
    parser.add_argument("--methods", default="lsp", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--defenses", default=DEFENSES)
    parser.add_argument("--train-limit", type=int, default=None, help="first N train rows [default: 200; quick 48]")
    parser.add_argument("--epochs", type=int, default=None, help="[default: 15; quick 4]")
    parser.add_argument("--size", type=int, default=None, help="the victims' working size [default: 128; quick 64]")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result names (a variant run keeps the main result)")
    return parser.parse_args()


def rows(split: str, limit: int | None) -> list[dict[str, str]]:
    with open(DATA / "index.csv", newline="") as fh:
        found = [r for r in csv.DictReader(fh) if r["split"] == split]
    return found[:limit] if limit else found


def protect(train_only: Path, out: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from ulmed.pipeline.protect import protect_path, summarize

    method, options = METHODS[name]
    start = time.perf_counter()
    manifest = protect_path(train_only, out, method=method, eps=args.eps, seed=args.seed, device="cpu",
                            method_options=options)
    s = summarize(manifest)
    return {"method": method, "options": options, "protect_s": round(time.perf_counter() - start, 1),
            "psnr_min": s["psnr_min"], "psnr_max": s["psnr_max"]}


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per defense and protection: clean Dice, protected Dice, ratio, train seconds."""
    clean = {c["defense"]: c["value"] for c in report["cells"] if c["protection"] == "clean"}
    return [{"defense": c["defense"], "protection": c["protection"], "clean_dice": clean.get(c["defense"]),
             "dice": c["value"], "ratio": c.get("ratio"), "train_s": c.get("train_s")}
            for c in report["cells"] if c["protection"] != "clean"]


def main() -> None:
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig

    args = parse_args()
    limit = args.train_limit or (48 if args.quick else 200)
    epochs, size = args.epochs or (4 if args.quick else 15), args.size or (64 if args.quick else 128)
    train, test = rows("train", limit), rows("test", 24 if args.quick else None)
    stem = "trainer_defenses_hc18" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ulmed-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        clean = data_set_copy(tmp / "clean", DATA, train + test)
        train_only = data_set_copy(tmp / "train", DATA, train)
        protections = {n.strip(): tmp / n.strip() for n in args.methods.split(",") if n.strip()}
        protected = {name: protect(train_only, root, name, args) for name, root in protections.items()}
        for name, info in protected.items():
            print(f"protected with {name} in {info['protect_s']} s, PSNR {info['psnr_min']:.1f} dB min", flush=True)
        out = REPO / "benchmarks" / "results" / stem
        if out.exists():
            shutil.rmtree(out)
        config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, seed=args.seed, device="cpu")
        report = run_evaluation(clean, protections, out, victims=["unet"],
                                defenses=[d.strip() for d in args.defenses.split(",") if d.strip()],
                                train_config=config, size=(size, size), seed=args.seed, progress=print)
    result = {"benchmark": stem, "command": " ".join(["python", "benchmarks/trainer_defenses_hc18.py", *sys.argv[1:]]),
              "data": "HC18 (native-size PNGs, fixed index.csv split)", "n_train": len(train),
              "n_test": len(test), "victim": "unet (small)", "epochs": epochs, "size": size, "eps": args.eps,
              "protections": protected, "rows": summary(report), "wall_s": round(time.perf_counter() - start, 1)}
    path = REPO / "benchmarks" / "results" / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["rows"]:
        print(f"{r['protection']:8s} {r['defense']:20s} clean {r['clean_dice']:.3f} protected {r['dice']:.3f} "
              f"ratio {r['ratio']:.2f}")
    print(f"-> {path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
