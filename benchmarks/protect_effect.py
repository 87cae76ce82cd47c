"""Does the protection work? Protect the train split, train a MONAI victim on it, test on clean data.

For each method (clean baseline, random control, training-free lsp, em, salm, salm warm-
started from the lsp code, and salm without labels) this
script protects the fixed train split of a shared data set at the victim's working
resolution, trains a MONAI UNet victim on the protected images with the untouched masks,
and reports Dice on the clean test split, the Dice ratio protected/clean, imperceptibility
(PSNR, SSIM, fraction of positions changed) and the wall time and peak memory of the
protection (each protection runs in a fresh process so its peak RSS is its own).
Optionally the victim's trainer uses one or more defenses (``--defense flip_jitter`` or
``--defense none,aug-shift,aug-rotate --tag ablation``: which part of an augmentation removes a
protection).

Usage:
    python benchmarks/protect_effect.py --dataset hc18 --quick
    python benchmarks/protect_effect.py --dataset hippocampus
    python benchmarks/protect_effect.py --dataset hc18 --defense flip_jitter
    python benchmarks/protect_effect.py --quick --size 128 --defense resize:64,resize:128 --tag at128
        # protected at 128 x 128; victims that resize to 64 (Pillow) or train at 128

Writes benchmarks/results/protect_effect_<dataset>[_<defense> | _defenses | _<tag>][_quick].json (``--tag`` wins).
Nothing is tuned on the test split: settings are fixed below, per mode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

#: Fixed settings per data set and mode (never chosen by looking at test results).
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "hc18": {
        "quick": {
            "size": (64, 64),
            "train_limit": 96,
            "test_limit": 64,
            "epochs": 12,
            "rounds": 4,
            "train_steps": 15,
            "pgd_steps": 8,
        },
        "full": {
            "size": (64, 64),
            "train_limit": None,
            "test_limit": None,
            "epochs": 20,
            "rounds": 6,
            "train_steps": 30,
            "pgd_steps": 10,
        },
    },
    "hippocampus": {
        "quick": {
            "shape": (40, 56, 40),
            "train_limit": 40,
            "test_limit": 20,
            "epochs": 15,
            "rounds": 4,
            "train_steps": 15,
            "pgd_steps": 8,
        },
        "full": {
            "shape": (40, 56, 40),
            "train_limit": None,
            "test_limit": None,
            "epochs": 30,
            "rounds": 6,
            "train_steps": 30,
            "pgd_steps": 10,
        },
    },
}
METHODS = (
    "clean",
    "random",
    "lsp",
    "em",
    "salm",
    "salm_nolabel",
    "em_eot",
    "salm_eot",
    "em_bayes",
    "em_eot_shift",
    "em_eot_robust",
    "em_eot_nnunet",
    "em_dynunet",
    "em_eot_nnunet_dynunet",
    "em_cell2",
    "em_cell3",
    "em_cell4",
    "em_eot_nnunet_cell2",
    "lsp_t8b4",
    "lsp_t16b8",
    "lsp_t32b16",
    "lsp_t2",
    "lsp_t4",
    "lsp_nyquist",
    "lsp_blocks",
)
#: benchmark row -> (registered method, extra options, use labels)
ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "clean": ("clean", {}, True),
    "random": ("random", {}, True),
    "lsp": ("lsp", {}, True),
    "em": ("em", {}, True),
    "salm": ("salm", {"rho": 0.1}, True),
    "salm_nolabel": ("salm", {"rho": 0.1}, False),
    "em_eot": ("em", {"augment": "standard"}, True),
    "salm_eot": ("salm", {"rho": 0.1, "augment": "standard"}, True),
    "em_bayes": ("em", {"objective": "bayes"}, True),
    "em_eot_shift": ("em", {"augment": {"shift": 3}}, True),
    "em_eot_robust": ("em", {"augment": "robust", "step_schedule": "dynamic"}, True),
    # nnU-Net's own augmentation probabilities (rotation, scaling p 0.2 each...): not every sample warped
    "em_eot_nnunet": ("em", {"augment": "nnunet"}, True),
    # a stronger surrogate: nnU-Net's architecture (full-resolution first stage) in place of the small UNet
    "em_dynunet": ("em", {"surrogate": "dynunet"}, True),
    "em_eot_nnunet_dynunet": ("em", {"augment": "nnunet", "surrogate": "dynunet"}, True),
    # the coarse parameterisation: one noise value per cell of 2, 3 or 4 pixels a side
    # (no finer than a grid that many times smaller)
    "em_cell2": ("em", {"cell": 2}, True),
    "em_cell3": ("em", {"cell": 3}, True),
    "em_cell4": ("em", {"cell": 4}, True),
    "em_eot_nnunet_cell2": ("em", {"augment": "nnunet", "cell": 2}, True),
    "lsp_t8b4": ("lsp", {"tile": 8, "block": 4}, True),
    "lsp_t16b8": ("lsp", {"tile": 16, "block": 8}, True),
    "lsp_t32b16": ("lsp", {"tile": 32, "block": 16}, True),
    "lsp_t2": ("lsp", {"tile": 2}, True),
    "lsp_t4": ("lsp", {"tile": 4}, True),
    "lsp_nyquist": ("lsp", {"style": "nyquist"}, True),
    "lsp_blocks": ("lsp", {"style": "blocks"}, True),
}


def _load(dataset: str, split: str, s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from benchmark_data import load_hc18, load_hippocampus

    limit = s["train_limit"] if split == "train" else s["test_limit"]
    if dataset == "hc18":
        images, masks, _ = load_hc18(DATA / "hc18", split, size=s["size"], limit=limit)
    else:
        images, masks, _ = load_hippocampus(DATA / "msd_hippocampus", split, shape=s["shape"], limit=limit)
    return images, masks


def _settings(dataset: str, mode: str, size: int | None) -> dict[str, Any]:
    """The mode's fixed settings; with ``size`` (2D) the images are protected at ``size x size`` instead."""
    s = dict(SETTINGS[dataset][mode])
    if size is not None:
        s["size"] = (size, size)
    return s


def _protect(method: str, dataset: str, mode: str, eps: str, seed: int, queue: mp.Queue, size: int | None = None,
             ) -> None:
    """Protect the train split in memory (fresh process: wall time and peak RSS are this method's)."""
    import torch

    from ulmed.eval.imperceptibility import imperceptibility
    from ulmed.io.record import IntensityMapping, Record
    from ulmed.pipeline.protect import build_method

    torch.set_num_threads(2)
    s = _settings(dataset, mode, size)
    images, masks = _load(dataset, "train", s)
    mapping = IntensityMapping(0.0, 1.0, 0.0, 1.0, quantum=0.0)
    name, extra, labelled = ROWS[method]
    records = [
        Record(f"{i}", images[i], mapping, images.ndim - 2, "array", target=masks[i] if labelled else None)
        for i in range(len(images))
    ]
    opts: dict[str, Any] = dict(extra)
    if name in ("em", "salm"):
        opts.update(rounds=s["rounds"], train_steps=s["train_steps"], pgd_steps=s["pgd_steps"])
    start = time.perf_counter()
    if name == "clean":
        protected, history = images, []
    else:
        protector = build_method(name, eps, seed, "cpu", **opts)
        if protector.needs_fit:
            protector.fit(records)
        protected = np.stack([protector.protect(r).image for r in records]).astype(np.float32)
        history = list(getattr(protector, "history", {}).values())
    wall = time.perf_counter() - start
    stats = [imperceptibility(images[i], protected[i]) for i in range(len(images))]
    finite_psnr = [x["psnr"] for x in stats if np.isfinite(x["psnr"])]
    queue.put(
        {
            "protected": protected,
            "protect_wall_s": round(wall, 1),
            "protect_peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "psnr": round(float(np.mean(finite_psnr)), 2) if finite_psnr else float("inf"),
            "ssim": round(float(np.mean([x["ssim"] for x in stats])), 4),
            "linf": round(float(max(x["linf"] for x in stats)), 5),
            "l0_fraction": round(float(np.mean([x["l0_fraction"] for x in stats])), 4),
            "surrogate_history": history,
        }
    )


def _resized(images: np.ndarray, masks: np.ndarray, size: tuple[int, int], kernel: str,
             ) -> tuple[np.ndarray, np.ndarray]:
    """A resizing trainer's copy: images ``(N, 1, H, W)`` to ``size`` with its kernel, masks with them (> 0.5)."""
    from ulmed.eval.loading import resize_plane

    x = np.stack([resize_plane(im[0], size, kernel)[None] for im in images]).clip(0, 1)
    y = np.stack([resize_plane(m.astype(np.float32), size, "pil") > 0.5 for m in masks]).astype(masks.dtype)
    return x.astype(np.float32), y


def _victim_dice(dataset: str, mode: str, train_images: np.ndarray, defense: str, seed: int,
                 size: int | None = None) -> dict[str, float]:
    """Train a victim on ``train_images`` under ``defense`` and test it on the clean test split.

    A ``resize:N[:kernel]`` defense is a trainer that resizes the images as given (protected at the
    mode's size or ``size``) to ``N x N`` with its kernel, and is tested on the test split read at ``N x N``.
    """
    import torch

    from ulmed.eval.defenses import build_defense
    from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim
    from ulmed.eval.victims import build_victim

    torch.set_num_threads(2)
    s = _settings(dataset, mode, size)
    _, train_masks = _load(dataset, "train", s)
    num_classes = 2 if dataset == "hc18" else 3
    d = build_defense(defense)
    if d.grid is not None and "size" in d.grid:
        train_images, train_masks = _resized(train_images, train_masks, d.grid["size"], d.grid["kernel"])
        s["size"] = d.grid["size"]
    test_images, test_masks = _load(dataset, "test", s)
    rng = np.random.default_rng(seed)
    images = d.apply_data(train_images, None, rng) if d.data is not None else train_images
    dims = train_images.ndim - 2
    model = build_victim("unet", spatial_dims=dims, in_channels=1, out_channels=num_classes, seed=seed)
    config = TrainConfig(epochs=s["epochs"], batch_size=8, lr=1e-3, seed=seed, device="cpu")
    start = time.perf_counter()
    train_victim(
        model, images, train_masks, task="segmentation", num_classes=num_classes, config=config, augment=d.augment
    )
    metrics = evaluate_victim(
        model, test_images, test_masks, task="segmentation", num_classes=num_classes, config=config
    )
    return {
        "dice": round(float(metrics["dice"]), 4),
        "iou": round(float(metrics["iou"]), 4),
        "victim_train_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), default="hc18")
    parser.add_argument("--quick", action="store_true", help="a subset at low resolution: minutes on 2 cores")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument(
        "--defense",
        default="none",
        help="trainer's defense(s), comma-separated: none, flip_jitter, augmentation, aug-shift, jpeg75 ...",
    )
    parser.add_argument("--tag", default="", help="result file suffix (default: the defense, or 'defenses')")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None,
                        help="protect HC18 at N x N instead of the mode's size (a resize:M defense then trains at M)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    defenses = [d.strip() for d in args.defense.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    ctx = mp.get_context("spawn")
    rows = []
    t0 = time.perf_counter()
    for method in methods:
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_protect, args=(method, args.dataset, mode, args.eps, args.seed, queue, args.size))
        proc.start()
        result = queue.get()
        proc.join()
        protected = result.pop("protected")
        for defense in defenses:
            row = {
                "method": method,
                "defense": defense,
                **result,
                **_victim_dice(args.dataset, mode, protected, defense, args.seed, args.size),
            }
            rows.append(row)
            print(
                f"{method:13s} {defense:14s} dice {row['dice']:.4f}  psnr {row['psnr']}  l0 {row['l0_fraction']}  "
                f"protect {row['protect_wall_s']} s  victim {row['victim_train_s']} s",
                flush=True,
            )
    for r in rows:
        clean = next((c["dice"] for c in rows if c["method"] == "clean" and c["defense"] == r["defense"]), None)
        r["dice_ratio"] = round(r["dice"] / clean, 4) if clean else None
    suffix = "" if defenses == ["none"] else "_" + (defenses[0] if len(defenses) == 1 else "defenses")
    suffix = f"_{args.tag}" if args.tag else suffix
    out = REPO / "benchmarks/results" / f"protect_effect_{args.dataset}{suffix}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "protect_effect",
        "dataset": args.dataset,
        "mode": mode,
        "defenses": defenses,
        "eps": args.eps,
        "seed": args.seed,
        "settings": _settings(args.dataset, mode, args.size),
        "victim": "unet (small)",
        "surrogate": "unet 16-32-64",
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"\n{'method':13s} {'defense':14s} {'dice':>6s} {'ratio':>6s} {'PSNR':>6s} {'SSIM':>6s} {'L0':>6s} "
        f"{'prot s':>7s} {'peak MB':>8s}"
    )
    for r in rows:
        print(
            f"{r['method']:13s} {r['defense']:14s} {r['dice']:6.3f} {r['dice_ratio'] or 0:6.3f} "
            f"{r['psnr']:6.1f} {r['ssim']:6.3f} "
            f"{r['l0_fraction']:6.3f} {r['protect_wall_s']:7.1f} {r['protect_peak_rss_MB']:8.1f}"
        )
    print(f"wall time {result['wall_s']} s -> {out}")


if __name__ == "__main__":
    main()
