"""Which fixed, training-free codes does a victim learn, and which augmentations remove them?

The code experiments of issue 7 in one rerunnable script. Each code is a ``+-1`` pattern
drawn from an HC18 mask (scaled to eps and added to the image at the victim's working
resolution, as ``protect_effect.py`` does); the victim is the same small UNet, tested on the
clean test split, with the trainer's defense(s) given.

Codes:
    nyquist_fg     the checkerboard on the foreground (what ``lsp`` writes on 2D images)
    nyquist_bg     the checkerboard on the background
    nyquist_fg_hv  checkerboard foreground, half-amplitude stripes (both axes) background
    nyquist_sign   the foreground checkerboard with a random sign per image
    sign4, sign8   the foreground checkerboard with a random sign per 4- / 8-pixel block
                   (what a rotated checkerboard looks like locally)
    block2_fg      a 2-pixel block checkerboard (period 4) on the foreground
    iid_fg         fresh i.i.d. +-1 noise on the foreground
    rim2, rim4     +1 inside / -1 outside within 2 / 4 pixels of the mask boundary
    rings4         stripes of period 4 in the signed distance to the boundary, everywhere
    rings4_out     the same, outside the mask only

Usage:
    python benchmarks/fixed_codes.py --quick --codes nyquist_fg,iid_fg --defense none,aug-rotate

Writes benchmarks/results/fixed_codes_hc18[_<tag>]_quick.json. Only the quick split is defined.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from protect_effect import SETTINGS, _load, _victim_dice
from scipy.ndimage import distance_transform_edt

from ulmed.core.patterns import nyquist_coded, nyquist_pattern
from ulmed.eval.imperceptibility import imperceptibility

REPO = Path(__file__).resolve().parents[1]
Code = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the boundary, negative inside the foreground (pixel centres at +-0.5)."""
    fg = mask == 1
    return np.where(fg, -(distance_transform_edt(fg) - 0.5), distance_transform_edt(~fg) - 0.5)


def _board(mask: np.ndarray) -> np.ndarray:
    return nyquist_pattern(1, 1, mask.shape)[0]


def _block_signs(mask: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = mask.shape
    signs = rng.choice([-1.0, 1.0], size=(-(-h // size), -(-w // size)))
    return np.kron(signs, np.ones((size, size)))[:h, :w]


def _rim(mask: np.ndarray, width: float) -> np.ndarray:
    sd = _signed_distance(mask)
    return np.where(sd < 0, 1.0, -1.0) * (np.abs(sd) < width)


def _rings(mask: np.ndarray, period: float, outside_only: bool = False) -> np.ndarray:
    sd = _signed_distance(mask)
    return -np.sign(np.sin(2 * np.pi * sd / period) + 1e-6) * ((sd > 0) if outside_only else 1.0)


CODES: dict[str, Code] = {
    "nyquist_fg": lambda m, rng: nyquist_coded(m, 1, m.shape)[0],
    "nyquist_bg": lambda m, rng: _board(m) * (m != 1),
    "nyquist_fg_hv": lambda m, rng: np.where(
        m == 1, _board(m), 0.5 * (nyquist_pattern(2, 1, m.shape)[0] + nyquist_pattern(3, 1, m.shape)[0])
    ),
    "nyquist_sign": lambda m, rng: _board(m) * (m == 1) * rng.choice([-1.0, 1.0]),
    "sign4": lambda m, rng: _board(m) * (m == 1) * _block_signs(m, rng, 4),
    "sign8": lambda m, rng: _board(m) * (m == 1) * _block_signs(m, rng, 8),
    "block2_fg": lambda m, rng: np.where((np.indices(m.shape) // 2).sum(0) % 2 == 0, 1.0, -1.0) * (m == 1),
    "iid_fg": lambda m, rng: rng.choice([-1.0, 1.0], size=m.shape) * (m == 1),
    "rim2": lambda m, rng: _rim(m, 2),
    "rim4": lambda m, rng: _rim(m, 4),
    "rings4": lambda m, rng: _rings(m, 4),
    "rings4_out": lambda m, rng: _rings(m, 4, outside_only=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", required=True, help="the quick HC18 split (the only mode)")
    parser.add_argument("--codes", default=",".join(CODES), help=f"comma-separated subset of {', '.join(CODES)}")
    parser.add_argument("--defense", default="none,aug-shift,aug-rotate,augmentation")
    parser.add_argument("--tag", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    unknown = sorted(set(codes) - set(CODES))
    if unknown:
        parser.error(f"unknown codes {unknown}")
    defenses = [d.strip() for d in args.defense.split(",") if d.strip()]
    settings = SETTINGS["hc18"]["quick"]
    images, masks = _load("hc18", "train", settings)
    eps = 8 / 255
    start = time.perf_counter()
    clean = {d: _victim_dice("hc18", "quick", images, d, args.seed)["dice"] for d in defenses}
    rows = [{"code": "clean", "defense": d, "dice": clean[d], "dice_ratio": 1.0} for d in defenses]
    for name in codes:
        rng = np.random.default_rng(args.seed)
        codes_ = np.stack([CODES[name](masks[k], rng)[None] for k in range(len(images))]).astype(np.float32)
        protected = np.clip(images + eps * codes_, 0.0, 1.0).astype(np.float32)
        psnr = float(np.mean([imperceptibility(images[k], protected[k])["psnr"] for k in range(len(images))]))
        for d in defenses:
            dice = _victim_dice("hc18", "quick", protected, d, args.seed)["dice"]
            rows.append(
                {
                    "code": name,
                    "defense": d,
                    "dice": dice,
                    "dice_ratio": round(dice / clean[d], 4),
                    "psnr": round(psnr, 2),
                }
            )
            print(f"{name:14s} {d:14s} dice {dice:.4f}  ratio {dice / clean[d]:.3f}  psnr {psnr:.1f}", flush=True)
    out = REPO / "benchmarks/results" / f"fixed_codes_hc18{'_' + args.tag if args.tag else ''}_quick.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "fixed_codes",
                "dataset": "hc18",
                "mode": "quick",
                "eps": "8/255",
                "seed": args.seed,
                "settings": settings,
                "victim": "unet (small)",
                "defenses": defenses,
                "wall_s": round(time.perf_counter() - start, 1),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
