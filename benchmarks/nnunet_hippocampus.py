"""nnU-Net v2 (3d_fullres) as the victim on MSD hippocampus: clean train split vs ``ulmed protect`` copies.

A data owner protects the train split of the fixed ``index.csv`` split as it is (native NIfTI
volumes, labels beside them) with the command ``ulmed protect`` -- the default method (``lsp``)
and ``--method em`` (the min-min schedule of ``seg3d_hippocampus.py --quick``). A user then
trains nnU-Net on the copy the way nnU-Net is run -- raw data set, nnU-Net's own plans,
preprocessing, trainer, data augmentation and predictor (:func:`ulmed.eval.nnunet.run_nnunet`)
-- and tests on the clean test split. ``ratio`` = Dice after protection / clean Dice.

The default schedule is a CPU schedule: 10 epochs x 30 iterations (nnU-Net's plans give batch 4 of
40 x 56 x 40 patches here; 5-8 s per step on one thread of a busy 2-core machine), one
validation iteration per epoch, one torch thread: about 40 minutes a training on 2 shared cores,
clean + lsp about 80. nnU-Net predicts background only for its first ~50 steps (5 x 10 gave Dice
0); after 120 steps (3 x 40) it segments the posterior hippocampus (label 2) only; after 300 both
labels (clean Dice 0.79). ``--methods lsp,em`` adds em's protection (3-9 minutes) and one more training;
with ``--workdir`` finished runs are reused. nnU-Net's own schedule (1000 epochs x 250
iterations) is a GPU day. Prediction runs without test-time mirroring unless ``--mirroring``
(8x the cost in 3D).

Usage:
    python benchmarks/nnunet_hippocampus.py                      # CPU: 121 train / 55 test, clean + lsp
    python benchmarks/nnunet_hippocampus.py --methods lsp,em --workdir /tmp/nnunet_runs   # + em
    python benchmarks/nnunet_hippocampus.py --methods lsp --train-limit 20 --test-limit 10   # a smoke run
    python benchmarks/nnunet_hippocampus.py --device cuda --epochs 50 --iterations 250 --mirroring

Writes benchmarks/results/nnunet_hippocampus.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grid_common import data_set_copy

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "msd_hippocampus"
OUT = REPO / "benchmarks" / "results" / "nnunet_hippocampus.json"
#: protection name -> ``ulmed protect`` arguments; lsp is the command's default method.
METHODS: dict[str, list[str]] = {
    "lsp": [],
    "em": ["--method", "em", "--set", "rounds=3", "--set", "train_steps=10", "--set", "pgd_steps=6"],
    "random": ["--method", "random"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lsp", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of nnU-Net (on 2 shared cores one thread was faster than two: 5.2 vs "
                        "7.5 s per training step); 0: torch's default")
    parser.add_argument("--mirroring", action="store_true", help="nnU-Net's test-time mirroring in prediction")
    parser.add_argument("--eps", default="auto", help="budget (default: the product default, auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep nnU-Net's runs here (reused on a rerun)")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


def split_rows(split: str, limit: int | None) -> list[dict[str, str]]:
    rows = [r for r in csv.DictReader(open(DATA / "index.csv")) if r["split"] == split]
    return rows[:limit] if limit is not None else rows


def protect(train_only: Path, out: Path, name: str, eps: str) -> dict[str, Any]:
    """``ulmed protect`` in its own process; time and imperceptibility from its manifest."""
    cmd = [sys.executable, "-m", "ulmed", "protect", "-i", str(train_only), "-o", str(out), "--eps", eps,
           *METHODS[name]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ulmed protect ({name}) failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    psnr = [e["metrics"]["psnr"] for e in manifest["entries"] if e.get("status") == "written" and e.get("metrics")]
    info = {"command": " ".join(["ulmed", *cmd[3:]]).replace(str(out.parent), "<tmp>"),
            "method": manifest["params"]["method"], "budget": manifest["params"]["budget"],
            "protect_s": round(seconds, 1), "volumes": len(psnr),
            "psnr_mean": round(sum(psnr) / len(psnr), 2), "psnr_min": round(min(psnr), 2)}
    print(f"protected with {name}: {len(psnr)} volumes in {info['protect_s']} s, PSNR mean {info['psnr_mean']} dB",
          flush=True)
    return info


def cases(root: Path, rows: list[dict[str, str]]) -> list[tuple[Path, Path]]:
    return [(root / r["image"], root / r["label"]) for r in rows]


def victim(train: list[tuple[Path, Path]], test: list[tuple[Path, Path]], schedule: Any, workdir: Path,
           name: str) -> dict[str, Any]:
    from ulmed.eval.nnunet import run_nnunet

    r = run_nnunet(train, test, spatial_dims=3, schedule=schedule, workdir=workdir)
    m = r["metrics"]
    print(f"nnU-Net on {name}: Dice {m['dice']:.3f} {m['dice_per_class']} (plan {r['plan_s']} s, "
          f"train {r['train_s']} s, test {r['test_s']} s{', reused' if r['reused'] else ''})", flush=True)
    keep = ("plan_s", "train_s", "test_s", "wall_s", "train_losses", "pseudo_dice", "reused")
    return {"dice": m["dice"], "dice_per_class": m["dice_per_class"], "hd95": m["hd95"], **{k: r[k] for k in keep},
            "_plans": r["plans"], "_nnunetv2": r["nnunetv2"]}


def ratios(result: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a is not None and b else None

    per_class = {k: ratio(v, clean["dice_per_class"].get(k)) for k, v in result["dice_per_class"].items()}
    return {"ratio": ratio(result["dice"], clean["dice"]), "ratio_per_class": per_class}


def run(args: argparse.Namespace, tmp: Path, workdir: Path) -> dict[str, Any]:
    from ulmed.eval.nnunet import NnunetSchedule

    schedule = NnunetSchedule(epochs=args.epochs, iterations=args.iterations, val_iterations=args.val_iterations,
                              device=args.device, seed=args.seed, threads=args.threads or None,
                              mirroring=args.mirroring)
    train_rows, test_rows = split_rows("train", args.train_limit), split_rows("test", args.test_limit)
    test = cases(DATA, test_rows)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    # what the data owner protects: the train volumes and label maps as they are, with their index
    train_only = data_set_copy(tmp / "train_only", DATA, train_rows, columns=("image", "label"))
    protections = {n: protect(train_only, tmp / n, n, args.eps) for n in names}
    clean = victim(cases(DATA, train_rows), test, schedule, workdir, "clean")
    methods = {}
    for n, info in protections.items():
        res = victim(cases(tmp / n, train_rows), test, schedule, workdir, n)
        methods[n] = {**{k: v for k, v in res.items() if not k.startswith("_")}, **ratios(res, clean),
                      "protection": info}
    plans = clean.pop("_plans")
    return {"schedule": schedule.to_dict(), "plans": plans, "nnunetv2": clean.pop("_nnunetv2"),
            "n_train": len(train_rows), "n_test": len(test_rows), "clean": clean, "methods": methods}


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workdir = args.workdir or tmp / "nnunet"
        body = run(args, tmp, workdir)
    report = {
        "benchmark": "nnunet_hippocampus",
        "what": "nnU-Net v2 3d_fullres (own plans, trainer, augmentation, predictor) trained on the clean or "
                "protected MSD hippocampus train split, tested on the clean test split",
        "data": "MSD Task04 hippocampus, fixed split of index.csv (../shared/data/msd_hippocampus)",
        "command": "python benchmarks/nnunet_hippocampus.py " + " ".join(sys.argv[1:]),
        "victim": "nnunet-3d", "configuration": "3d_fullres",
        "nnunet_default_schedule": {"epochs": 1000, "iterations": 250, "val_iterations": 50},
        **body,
        "cpu_count": os.cpu_count(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"clean Dice {body['clean']['dice']:.3f}; " + "; ".join(
        f"{n} {m['dice']:.3f} (ratio {m['ratio']})" for n, m in body["methods"].items()))
    print(f"wall time {report['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
