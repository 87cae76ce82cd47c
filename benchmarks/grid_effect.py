"""Protection on the trainer's grid: native-size files, a victim that resizes them with its own kernel.

A data owner protects the HC18 PNGs as they are (about 400 x 270 px) with ``protect_path``
(the code of ``ulmed protect``), once per protection (``--protections``: ``lsp`` on the
native grid, ``lsp`` made for a working grid with ``--grid size:N``, or an ML-ready release
``release:N``, resampled to ``N x N`` and protected there). Each victim then
reads the written files the way a 2D trainer does: it letterboxes them to its working size
N with its own resize kernel (Pillow bilinear, OpenCV ``INTER_LINEAR`` or ``INTER_AREA``,
torch with antialiasing), trains a MONAI UNet (``--net``: another victim network) with flips
and brightness/contrast jitter (``flip_jitter``, or ``--defense``), and is tested on the clean
test split read with the same loader. Each protected victim is reported beside the clean victim of the same loader.

Usage:
    python benchmarks/grid_effect.py                                  # 200 train images, 15 epochs
    python benchmarks/grid_effect.py --victims pil:64,pil:128,pil:256 --protections native,size:128
    python benchmarks/grid_effect.py --train-limit 0 --epochs 20      # the whole train split
    python benchmarks/grid_effect.py --protections em,em:cell3 --victims pil:128   # em, and em in 3 x 3 cells

Writes benchmarks/results/grid_effect_hc18[_TAG].json (``--tag``).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from grid_common import data_set_copy
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"

#: loader name -> resize (H, W) float32 image to (h, w)
RESIZERS: dict[str, Callable[[np.ndarray, tuple[int, int]], np.ndarray]] = {
    "pil": lambda a, hw: np.asarray(Image.fromarray(a).resize(hw[::-1], Image.Resampling.BILINEAR)),
    # albumentations' Resize runs OpenCV's resize: interpolation 1 = INTER_LINEAR, 3 = INTER_AREA
    "cv2-linear": lambda a, hw: A.Resize(*hw, interpolation=1)(image=a)["image"],
    "cv2-area": lambda a, hw: A.Resize(*hw, interpolation=3)(image=a)["image"],
    "torch-aa": lambda a, hw: F.interpolate(torch.from_numpy(a)[None, None], size=hw, mode="bilinear", antialias=True)[
        0, 0
    ].numpy(),
}


def _rows(split: str, limit: int) -> list[dict[str, str]]:
    with open(DATA / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    return rows[:limit] if limit else rows


def _letterbox(arr: np.ndarray, size: int, resize: Callable[..., np.ndarray], nearest: bool = False) -> np.ndarray:
    h, w = arr.shape
    scale = min(size / h, size / w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = np.asarray(Image.fromarray(arr).resize(hw[::-1], Image.Resampling.NEAREST)) if nearest else resize(arr, hw)
    out = np.zeros((size, size), dtype=small.dtype)
    top, left = (size - hw[0]) // 2, (size - hw[1]) // 2
    out[top : top + hw[0], left : left + hw[1]] = small
    return out


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _load(root: Path, rows: list[dict[str, str]], loader: str, size: int, masks_root: Path = DATA,
          ) -> tuple[np.ndarray, np.ndarray]:
    resize = RESIZERS[loader]
    images = np.stack([np.clip(_letterbox(_read(root / r["image"]), size, resize), 0, 1)[None] for r in rows])
    masks = np.stack(
        [
            _letterbox(
                (np.asarray(Image.open(masks_root / r["mask"]).convert("L")) > 0).astype(np.uint8), size, resize,
                nearest=True,
            )
            for r in rows
        ]
    )
    return images.astype(np.float32), masks.astype(np.int64)


def _varied(dst: Path, rows: list[dict[str, str]], min_height: int) -> Path:
    """Copies of the rows' images and masks, each cut to a height drawn from ``[min_height, H]`` (centred; seeded
    by the file name), so that a letterboxing trainer pads each image by its own number of rows."""
    for r in rows:
        arrays = {}
        for column in ("image", "mask"):
            with Image.open(DATA / r[column]) as im:
                arrays[column] = np.asarray(im)
        full = arrays["image"].shape[0]
        h = int(np.random.default_rng(zlib.crc32(r["image"].encode())).integers(min(min_height, full), full + 1))
        top = (full - h) // 2
        for column, arr in arrays.items():
            (dst / r[column]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr[top : top + h]).save(dst / r[column])
    return dst


def _dice(
    images: np.ndarray, masks: np.ndarray, test: tuple[np.ndarray, np.ndarray], args: argparse.Namespace
) -> float:
    from ulmed.eval.defenses import build_defense
    from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim
    from ulmed.eval.victims import build_victim

    model = build_victim(args.net, spatial_dims=2, in_channels=1, out_channels=2, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=8, lr=1e-3, seed=args.seed, device="cpu")
    augment = None if args.defense == "none" else build_defense(args.defense).augment
    train_victim(model, images, masks, task="segmentation", num_classes=2, config=config, augment=augment)
    return float(evaluate_victim(model, *test, task="segmentation", num_classes=2, config=config)["dice"])


#: em's schedule for ``em[:cellN]`` protections (protect_effect.py's quick mode: minutes, not hours, at native size).
EM_SCHEDULE = {"rounds": 4, "train_steps": 15, "pgd_steps": 8}


def _protect(src: Path, out: Path, grid: str, args: argparse.Namespace) -> dict[str, Any]:
    """``native`` / ``size:N``: ``protect_path`` with that lsp grid; ``release:N``: an ML-ready release at N;
    ``em`` / ``em:cellN``: em on the files as they are, its noise in cells of N pixels a side."""
    from ulmed.pipeline.protect import protect_path, summarize
    from ulmed.pipeline.release import release_dataset

    start = time.perf_counter()
    if grid.startswith("em"):
        if grid != "em" and not (grid.startswith("em:cell") and grid[7:].isdigit()):
            raise SystemExit(f"--protections: {grid!r} is not em or em:cellN")
        options = {**EM_SCHEDULE, "cell": int(grid[7:] or 1)}
        manifest = protect_path(src, out, method="em", eps=args.eps, seed=args.seed, device="cpu",
                                method_options=options)
        return {"protect_s": round(time.perf_counter() - start, 1), "psnr_min": summarize(manifest)["psnr_min"],
                "options": options}
    if grid.startswith("release:"):
        # the release protects on its own grid: the release's cell (release.RELEASE_CELL) unless --release-cell says
        cell = {"cell": args.release_cell} if args.release_cell else {}
        cell.update({"psnr": args.psnr} if args.psnr else {})
        report = release_dataset(
            src, out, method="lsp", eps=args.eps, seed=args.seed, device="cpu", size=int(grid.split(":")[1]),
            method_options=cell,
        )
        return {
            "protect_s": round(time.perf_counter() - start, 1),
            "psnr_min": report.spread("psnr")[0],  # type: ignore[index]
            "options": {"release_size": int(grid.split(":")[1]), **cell},
        }
    options: dict[str, Any] = {"grid": grid} if grid in ("native", "auto") else {"grid": grid, "cell": args.cell}
    options.update({"psnr": args.psnr} if args.psnr else {})
    manifest = protect_path(src, out, method="lsp", eps=args.eps, seed=args.seed, device="cpu", method_options=options)
    return {
        "protect_s": round(time.perf_counter() - start, 1),
        "psnr_min": summarize(manifest)["psnr_min"],
        "options": options,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protections",
        default="native,size:128",
        help="lsp grids to protect with: native, auto, size:N[,M] (protect --grid), release:N (release --size N); "
             "or em, em:cellN (em on the files, its noise in cells of N px)",
    )
    parser.add_argument(
        "--victims",
        default="pil:64,pil:128,cv2-linear:128,cv2-area:128,torch-aa:128",
        help="LOADER:SIZE of each victim; loaders: " + ", ".join(RESIZERS),
    )
    parser.add_argument("--cell", type=int, default=2, help="lsp cell on the working grid (lsp's default: 2)")
    parser.add_argument("--release-cell", type=int, default=0,
                        help="lsp cell of release:N protections (0: the release's own, release.RELEASE_CELL)")
    parser.add_argument("--train-limit", type=int, default=200, help="first N train images (0: all 421)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--defense", default="flip_jitter")
    parser.add_argument("--net", default="unet", help="the victims' network, a name of ulmed.eval.victims.VICTIMS")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--psnr", type=float, default=0.0,
                        help="lsp --set psnr=P: a PSNR floor in dB on every image (0: the budget's; --eps auto: 38 dB)")
    parser.add_argument("--vary-height", type=int, default=0,
                        help="cut each image (and mask) to a height drawn from [N, its own] first: a data set of "
                             "varied aspect ratios, which a letterboxing trainer pads by varied offsets (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_rows, test_rows = _rows("train", args.train_limit), _rows("test", 0)
    victims = [(v.split(":")[0], int(v.split(":")[1])) for v in args.victims.split(",") if v.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = _varied(tmp / "hc18_varied", train_rows + test_rows, args.vary_height) if args.vary_height else DATA
        src = data_set_copy(tmp / "hc18_train", base, train_rows)
        copies: dict[str, tuple[Path, dict[str, Any]]] = {"clean": (src, {})}
        for grid in [g.strip() for g in args.protections.split(",") if g.strip()]:
            root = tmp / grid.replace(":", "_").replace(",", "-")
            copies[grid] = (root, _protect(src, root, grid, args))
            print(grid, copies[grid][1], flush=True)
        for loader, size in victims:
            test = _load(base, test_rows, loader, size, base)
            clean_images = None
            for name, (root, info) in copies.items():
                start = time.perf_counter()
                images, masks = _load(root, train_rows, loader, size, base)
                clean_images = images if name == "clean" else clean_images
                rms = 0.0 if clean_images is None else float(np.sqrt(np.mean((images - clean_images) ** 2)))
                dice = _dice(images, masks, test, args)
                results.append(
                    {
                        "protection": name,
                        "loader": loader,
                        "size": size,
                        "dice": round(dice, 4),
                        "rms_after_resize": round(rms, 5),
                        "train_s": round(time.perf_counter() - start, 1),
                        **info,
                    }
                )
                print(results[-1], flush=True)
    for r in results:
        clean = next(
            c["dice"]
            for c in results
            if c["protection"] == "clean" and (c["loader"], c["size"]) == (r["loader"], r["size"])
        )
        r["dice_ratio"] = round(r["dice"] / clean, 3)
    out = REPO / "benchmarks/results" / f"grid_effect_hc18{'_' + args.tag if args.tag else ''}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "grid_effect",
                "dataset": "hc18",
                "train_images": len(train_rows),
                "test_images": len(test_rows),
                "epochs": args.epochs,
                "defense": args.defense,
                "eps": args.eps,
                "cell": args.cell,
                "psnr_floor": args.psnr or None,
                "vary_height": args.vary_height or None,
                "victim": f"MONAI {args.net} (small), letterbox",
                "rows": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    for r in results:
        print(
            f"{r['protection']:>10} {r['loader']:>10}:{r['size']:<4} dice {r['dice']:.3f} ratio {r['dice_ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
