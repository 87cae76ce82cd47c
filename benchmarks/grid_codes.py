"""Which code survives which warp, on the trainer's own grid (HC18 at 128 x 128).

The images are letterboxed to the working size with Pillow, as a victim of ``grid_effect.py``
reads them, and each code is added there in memory (no resize after it): this is what an
ML-ready release (``ulmed release --size N``) gives a trainer that uses it as it is. Each
defense then trains the same MONAI UNet (small, 15 epochs, Adam 1e-3) on the coded images and
is tested on the clean test split; Dice ratio = coded / clean victim of the same defense.

Codes (``--codes``, eps 8/255, foreground only):
    checkerN   the Nyquist checkerboard of :func:`ulmed.core.patterns.nyquist_coded` with cells of
               N x N working-grid pixels (period 2N), lsp's code;
    mixA-B     half the budget to the cell-A checkerboard, half to the cell-B one;
    stripes    the cell-1 checkerboard on the foreground and row stripes on the background (both
               classes coded, so a shift changes the sign of each but not which is which);
    noiseN     a fixed random +-1 pattern in cells of N x N on the foreground (one per image, seeded
               by its index): a texture with no orientation, which a rotation does not turn away
               from what the network learned to detect;
    bandP      isotropic band-pass noise of period about P working pixels (an annulus of the
               spectrum, width P/4), signed to +-1, on the foreground: rotation- and
               scale-tolerant, and coarse enough that interpolation keeps most of it;
    edgeW      the cell-2 checkerboard only within W working pixels inside the mask's boundary, scaled
               to the energy the code has on the whole mask (the same PSNR): is the boundary where a
               code is worth most?
    edgepmW    the same, with its negative within W pixels outside the boundary;
    ringsP     concentric rings of period P around the image centre, signed to +-1, on the
               foreground: a regular pattern that a rotation about the centre (and a flip) leaves
               as it is;
    hstripesP  horizontal stripes of period P on the foreground (a 1D grating);
    tiltedP    a checkerboard of period P turned by a random angle per image (0-90 degrees, seeded by
               the image's index) and drawn on the grid without interpolation: the network meets the
               code at every orientation, as it meets the trainer's rotated samples.

Usage:
    python benchmarks/grid_codes.py
    python benchmarks/grid_codes.py --codes checker1,checker2 --defenses flip_jitter,aug-rotate

Writes benchmarks/results/grid_codes_hc18[_TAG].json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from grid_effect import DATA, _dice, _load, _rows

from ulmed.core.patterns import nyquist_coded

REPO = Path(__file__).resolve().parents[1]


def code_of(name: str, masks: np.ndarray) -> np.ndarray:
    """``(N, 1, H, W)`` code in units of eps for the ``(N, H, W)`` masks."""
    shape = masks.shape[1:]
    if name.startswith("checker"):
        cell = int(name[len("checker"):])
        return np.stack([nyquist_coded(m, 1, shape, cell=cell) for m in masks])
    if name.startswith("mix"):
        a, b = name[len("mix"):].split("-")
        return 0.5 * code_of(f"checker{a}", masks) + 0.5 * code_of(f"checker{b}", masks)
    if name == "stripes":
        rows = np.where(np.arange(shape[0]) % 2 == 0, 1.0, -1.0)[:, None] * np.ones(shape)
        return np.where(masks[:, None] > 0, code_of("checker1", masks), rows[None, None])
    for prefix, field in _SEEDED.items():  # one field per image, seeded by its index
        if name.startswith(prefix):
            param = float(name[len(prefix):])
            return _masked([field(np.random.default_rng(i), shape, param) for i in range(len(masks))], masks)
    if name.startswith("rings"):
        period = float(name[len("rings"):])
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        radius = np.hypot(yy - (shape[0] - 1) / 2, xx - (shape[1] - 1) / 2)
        return _masked([np.where(np.sin(2 * np.pi * radius / period) >= 0, 1.0, -1.0)] * len(masks), masks)
    if name.startswith("edge"):  # edgeW / edgepmW: the cell-2 code near the boundary only
        both = name.startswith("edgepm")
        return np.stack([_edge_band(m, int(name[len("edgepm" if both else "edge"):]), both) for m in masks])
    if name.startswith("hstripes"):
        period = int(name[len("hstripes"):])
        rows = np.where(np.arange(shape[0]) % period < period // 2, 1.0, -1.0)[:, None] * np.ones(shape)
        return _masked([rows] * len(masks), masks)
    raise SystemExit(f"unknown code {name!r}: checkerN, mixA-B, stripes, noiseN, bandP, edgeW, edgepmW, ringsP, "
                     "hstripesP or tiltedP")


def _edge_band(mask: np.ndarray, width: int, both: bool) -> np.ndarray:
    """``(1, H, W)``: the cell-2 checkerboard within ``width`` px inside the boundary of ``mask`` (and, with
    ``both``, its negative within ``width`` px outside), scaled to the energy of the code on the whole mask."""
    from scipy.ndimage import distance_transform_edt

    inside = mask > 0
    full = nyquist_coded(mask, 1, mask.shape, cell=2)
    code = full * (inside & (distance_transform_edt(inside) <= width))[None]
    if both:
        outside = ~inside & (distance_transform_edt(~inside) <= width)
        code = code - nyquist_coded(outside.astype(mask.dtype), 1, mask.shape, cell=2) * outside[None]
    return code * np.sqrt((full**2).sum() / max(float((code**2).sum()), 1.0))


def _masked(fields: list[np.ndarray], masks: np.ndarray) -> np.ndarray:
    """``(N, 1, H, W)``: each field inside its mask, 0 outside."""
    return np.stack([np.where(m > 0, f, 0.0)[None] for f, m in zip(fields, masks)])


def _cells(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Random +-1 in cells of ``cell`` x ``cell`` pixels."""
    cell = int(cell)
    coarse = rng.choice([-1.0, 1.0], size=(-(-shape[0] // cell), -(-shape[1] // cell)))
    return np.kron(coarse, np.ones((cell, cell)))[: shape[0], : shape[1]]


def _band(rng: np.random.Generator, shape: tuple[int, ...], period: float) -> np.ndarray:
    """The sign of white noise filtered to spatial frequencies within 1/8 of 1/period of 1/period."""
    fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    radius = np.hypot(fy, fx)
    keep = np.abs(radius - 1 / period) <= 1 / (8 * period)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * keep).real
    return np.where(field >= 0, 1.0, -1.0)


def _tilted(rng: np.random.Generator, shape: tuple[int, ...], period: float) -> np.ndarray:
    """The sign of a checkerboard of ``period`` turned by a random angle, sampled at the pixel centres."""
    angle = rng.uniform(0, np.pi / 2)
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    return np.where(np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) >= 0, 1.0, -1.0)


#: Codes drawn per image from a generator seeded by the image's index: name prefix -> field maker.
_SEEDED = {"noise": _cells, "band": _band, "tilted": _tilted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", default="checker1,checker2,checker3,checker4")
    parser.add_argument("--defenses", default="flip_jitter,aug-rotate,aug-scale,augmentation")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=200, help="first N train images (0: all 421)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--net", default="unet", help="the victim's network, a name of ulmed.eval.victims.VICTIMS")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_rows, test_rows = _rows("train", args.train_limit), _rows("test", 0)
    images, masks = _load(DATA, train_rows, "pil", args.size)
    test = _load(DATA, test_rows, "pil", args.size)
    codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    coded = {c: np.clip(np.round((images + args.eps * code_of(c, masks)) * 255) / 255, 0, 1).astype(np.float32)
             for c in codes}
    rows = []
    for defense in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        run = argparse.Namespace(seed=args.seed, epochs=args.epochs, defense=defense, net=args.net)
        clean = _dice(images, masks, test, run)
        rows.append({"code": "clean", "defense": defense, "dice": round(clean, 4), "dice_ratio": 1.0})
        for c in codes:
            start = time.perf_counter()
            dice = _dice(coded[c], masks, test, run)
            rows.append({"code": c, "defense": defense, "dice": round(dice, 4), "dice_ratio": round(dice / clean, 3),
                         "train_s": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    psnr = {c: round(float(10 * np.log10(1 / np.mean((coded[c] - images) ** 2))), 2) for c in codes}
    out = REPO / "benchmarks/results" / f"grid_codes_hc18{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "benchmark": "grid_codes", "dataset": "hc18", "size": args.size, "train_images": len(train_rows),
        "test_images": len(test_rows), "epochs": args.epochs, "eps": round(args.eps, 6), "seed": args.seed,
        "victim": f"{args.net} (small), Pillow letterbox, code added on the working grid",
        "psnr_mean": psnr, "rows": rows,
    }, indent=2))
    print(f"wrote {out}")
    for r in rows:
        print(f"{r['code']:>10} {r['defense']:>14}  dice {r['dice']:.3f}  ratio {r['dice_ratio']:.3f}")


if __name__ == "__main__":
    main()
