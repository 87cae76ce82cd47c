"""Which Nyquist code a 3D UNet learns on hippocampus volumes: whole volumes, flips, random patches.

The volumes are the hippocampus working copy of ``seg3d_hippocampus.py`` (per-volume min/max to
[0, 1], centre pad/crop to 40 x 56 x 40). Each code is added on that grid in memory at +-eps on
the foreground (labels 1 and 2), and each setting trains the same MONAI 3D UNet (batch 4,
Adam 1e-3) on the coded volumes and tests it on the clean test split with MONAI's sliding
window; Dice ratio = coded / clean victim of the same setting, trained in the same run.

A period-2 pattern keeps its shape under every integer shift and flip but not its sign: a
shift by an odd number of voxels along an axis the pattern alternates on, or a flip of an
axis of even length, turns it into its negative. Random patches (``patch``) and left-right
flips (``flip_jitter``: the first axis, with brightness/contrast jitter) therefore show the
victim the code with a random sign per sample.

Codes (``--codes``):
    blocks     lsp's block code, the volume default before labelled volumes got the Nyquist code
               (:func:`ulmed.core.patterns.mask_coded`, tile 8, block 1): a random +-1 pattern per
               class, the background included;
    checker    the checkerboard ``(-1)^(i+j+k)`` on the whole foreground (both labels);
    nyquist    lsp's code (:func:`ulmed.core.patterns.nyquist_coded`): label 1 the checkerboard,
               label 2 ``(-1)^(i+j)``;
    pseudo     label-free (a DICOM export has no masks): lsp's Nyquist code on the image's three
               multi-Otsu intensity bands (:func:`ulmed.core.targets.pseudo_label_map`), the darkest
               band left alone;
    patternN   Nyquist pattern number N (:func:`ulmed.core.patterns.nyquist_pattern`) on the whole
               foreground; pattern 4 is ``(-1)^(j+k)``, which a flip of the first axis leaves as it is;
    tri        period 3 instead of 2: label v the product, over the axes of Nyquist corner v
               (:func:`ulmed.core.patterns.nyquist_corners`), of ``(+1, -1, +1)[index mod 3]`` (label 1
               along all three axes, label 2 along the first two). 3 is odd, so a stride-2 layer
               samples it as the same pattern shifted, whatever the patch's offset, and a shift or
               a flip moves it without changing its sign.
    noise      a random +-1 per voxel on the foreground (both labels), drawn anew for each volume,
               the background left alone: not a pattern but a texture, whose energy no shift, flip
               or sign change alters, so a strided first layer meets the same cue in every patch;
    dotsN      +sqrt(N^3) on the foreground voxels whose indices are all multiples of N (N = 2, 3), 0
               elsewhere: the energy of the +-1 codes on 1 / N^3 of the voxels. The code is never
               negative, so no shift or flip turns it into its negative;
    noise12    the same texture, label 1 per voxel and label 2 in cubes of 2 voxels (a coarser
               grain), so that the two labels differ in the texture's spectrum.

Settings (``--settings``, ``whole|patch:<defense>``): whole volumes or random 24 x 32 x 24 patches
(MONAI RandCropByPosNegLabel) under a defense of :func:`ulmed.eval.defenses.build_defense`.

Usage:
    python benchmarks/volume_codes.py
    python benchmarks/volume_codes.py --codes checker --settings whole:flip_jitter --eps 16/255 --tag eps16
    python benchmarks/volume_codes.py --cell 2 --settings patch:flip_jitter --tag cell2

Writes benchmarks/results/volume_codes_hippocampus[_TAG].json.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from benchmark_data import load_hippocampus
from seg3d_hippocampus import DATA, PATCH, SHAPE

from ulmed.core.patterns import mask_coded, nyquist_coded, nyquist_corners, nyquist_pattern
from ulmed.core.targets import pseudo_label_map

REPO = Path(__file__).resolve().parents[1]


def code_of(name: str, labels: np.ndarray, image: np.ndarray, cell: int = 1) -> np.ndarray:
    """``(1, *spatial)`` code in units of eps for one ``(*spatial)`` label map and its ``(1, *spatial)`` image.

    ``cell``: the Nyquist codes (checker, nyquist, pseudo, patternN) in cells of ``cell`` voxels.
    """
    spatial = labels.shape
    if name == "nyquist":
        return nyquist_coded(labels, 1, spatial, cell)
    if name == "pseudo":  # label-free: the Nyquist code on the image's multi-Otsu bands (band 0 left alone)
        return nyquist_coded(pseudo_label_map(image), 1, spatial, cell)
    if name == "tri":
        return _period3_coded(labels)
    if name.startswith("dots"):
        return _dots_coded(labels, int(name[len("dots"):]))
    if name in ("noise", "noise12"):
        return _texture_coded(labels, image, coarse_label=2 if name == "noise12" else None)
    if name == "blocks":  # lsp's block code (tile 8, block 1, run seed 0), the background coded too
        return mask_coded(labels, 1, spatial, tile=8, block=1, seed=0)
    index = 1 if name == "checker" else int(name[len("pattern"):]) if name.startswith("pattern") else 0
    if index < 1:
        raise SystemExit(f"unknown code {name!r}: blocks, checker, nyquist, pseudo or patternN (N >= 1)")
    return np.where(labels[None] > 0, nyquist_pattern(index, 1, spatial, cell), 0.0).astype(np.float32)


#: One period of the ``tri`` code along an axis.
PERIOD3 = np.array([1.0, -1.0, 1.0], dtype=np.float32)


def _period3_coded(labels: np.ndarray) -> np.ndarray:
    """``(1, *spatial)`` ``tri`` code: label v the period-3 pattern over the axes of Nyquist corner v."""
    corners = nyquist_corners(labels.ndim)
    grids = np.indices(labels.shape, sparse=True)
    code = np.zeros(labels.shape, dtype=np.float32)
    for value in np.unique(labels[labels > 0]):
        axes = corners[(int(value) - 1) % len(corners)]
        pattern = np.ones((1,) * labels.ndim, dtype=np.float32)
        for a in axes:
            pattern = pattern * PERIOD3[grids[a] % 3]
        code = np.where(labels == value, np.broadcast_to(pattern, labels.shape), code)
    return code[None]


def _dots_coded(labels: np.ndarray, period: int) -> np.ndarray:
    """``(1, *spatial)`` ``dotsN`` code: ``sqrt(N^d)`` on the foreground where every index is a multiple of N."""
    lattice = np.ones(labels.shape, dtype=bool)
    for grid in np.indices(labels.shape, sparse=True):
        lattice &= grid % period == 0
    return np.where(lattice & (labels > 0), np.float32(period ** (labels.ndim / 2)), 0.0)[None].astype(np.float32)


def _texture_coded(labels: np.ndarray, image: np.ndarray, coarse_label: int | None) -> np.ndarray:
    """``(1, *spatial)`` ``noise`` code: +-1 at random on the foreground, the grain coarser on ``coarse_label``.

    The signs are drawn from a generator seeded by the volume's own values, so each volume gets its own
    texture and a rerun the same one.
    """
    rng = np.random.default_rng(int(np.round(image.sum() * 1e3)) % (1 << 32))
    fine = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=labels.shape)
    coarse_shape = tuple(-(-n // 2) for n in labels.shape)
    coarse = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=coarse_shape)
    for axis in range(labels.ndim):
        coarse = np.repeat(coarse, 2, axis=axis)
    coarse = coarse[tuple(slice(0, n) for n in labels.shape)]
    code = np.where(labels > 0, fine, 0.0)
    if coarse_label is not None:
        code = np.where(labels == coarse_label, coarse, code)
    return code[None].astype(np.float32)


def _dice(images: np.ndarray, labels: np.ndarray, test: tuple[np.ndarray, np.ndarray], setting: str,
          args: argparse.Namespace) -> float:
    from ulmed.eval.defenses import build_defense
    from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim
    from ulmed.eval.victims import build_victim

    grid, defense = setting.split(":")
    model = build_victim(args.victim, spatial_dims=3, in_channels=1, out_channels=3, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=4, lr=1e-3, seed=args.seed, device="cpu",
                         patch_size=PATCH if grid == "patch" else None)
    augment = None if defense == "none" else build_defense(defense).augment
    train_victim(model, images, labels, task="segmentation", num_classes=3, config=config, augment=augment)
    return float(evaluate_victim(model, *test, task="segmentation", num_classes=3, config=config)["dice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", default="checker,nyquist,pattern4")
    parser.add_argument("--settings", default="whole:none,whole:flip_jitter,patch:none")
    parser.add_argument("--train-limit", type=int, default=40, help="the first N train volumes (of 121)")
    parser.add_argument("--test-limit", type=int, default=20, help="the first N test volumes (of 55)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eps", type=lambda s: float(Fraction(s)), default=8 / 255, help="e.g. 8/255")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell", type=int, default=1, help="Nyquist codes in cells of N voxels (2: period 4)")
    parser.add_argument("--victim", default="unet", help="a name of ulmed.eval.victims.VICTIMS (3D)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images, labels, _ = load_hippocampus(DATA, "train", shape=SHAPE, limit=args.train_limit)
    test = load_hippocampus(DATA, "test", shape=SHAPE, limit=args.test_limit)[:2]
    codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    coded = {c: np.clip(images + args.eps * np.stack([code_of(c, y, x, args.cell) for x, y in zip(images, labels)]),
                        0, 1).astype(np.float32) for c in codes}
    rows = []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        start = time.perf_counter()
        clean = _dice(images, labels, test, setting, args)
        rows.append({"code": "clean", "setting": setting, "dice": round(clean, 4), "dice_ratio": 1.0,
                     "train_s": round(time.perf_counter() - start, 1)})
        for c in codes:
            start = time.perf_counter()
            dice = _dice(coded[c], labels, test, setting, args)
            rows.append({"code": c, "setting": setting, "dice": round(dice, 4), "dice_ratio": round(dice / clean, 3),
                         "train_s": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    psnr = {c: round(float(10 * np.log10(1 / np.mean((coded[c] - images) ** 2))), 2) for c in codes}
    out = REPO / "benchmarks/results" / f"volume_codes_hippocampus{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "benchmark": "volume_codes", "dataset": "msd_hippocampus", "shape": list(SHAPE), "patch": list(PATCH),
        "train_volumes": len(images), "test_volumes": len(test[0]), "epochs": args.epochs,
        "eps": round(args.eps, 6), "seed": args.seed, "cell": args.cell,
        "victim": args.victim, "victim_note": "small size, code added on the working copy's grid",
        "psnr_mean": psnr, "rows": rows,
    }, indent=2))
    print(f"wrote {out}")
    for r in rows:
        print(f"{r['code']:>10} {r['setting']:>18}  dice {r['dice']:.3f}  ratio {r['dice_ratio']:.3f}")


if __name__ == "__main__":
    main()
