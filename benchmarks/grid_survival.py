"""What a trainer's resize keeps of a working-grid code: the nearest-neighbour copy against ``preimage``.

For the HC18 test fixtures (``tests/data/hc18``, native 400 x 270), the Nyquist code of the
foreground on the letterboxed 128-pixel working grid is mapped to native pixels by nearest
neighbour and by :func:`ulmed.core.grid.preimage` at quantiles 0 (the sign of the adjoint), 0.3
(the default) and 0.5, for cells 1, 2 and 3. Each is resized back with every kernel of
:class:`ulmed.core.grid.Kernel` and with Pillow; the figure is the projection of the resized
perturbation onto the code (1: all of it kept), beside the perturbation's PSNR on the native image.

Usage:
    python benchmarks/grid_survival.py

Writes benchmarks/results/grid_survival.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ulmed.core.grid import Kernel, WorkingGrid, preimage, resize
from ulmed.core.patterns import nyquist_coded

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "hc18"
#: Pre-image step counts compared (0: the nearest-neighbour copy).
QUANTILES = (0.0, 0.3, 0.5)
#: Cells of the working-grid code compared.
CELLS = (1, 2, 3)


def _kept(image: np.ndarray, delta: np.ndarray, code: np.ndarray) -> dict[str, float]:
    shape = code.shape[-2:]
    out = {
        k.value: float((resize(torch.from_numpy(delta)[None], shape, k)[0].numpy() * code).sum() / (code * code).sum())
        for k in Kernel
    }
    pil = [
        np.asarray(Image.fromarray(a[0]).resize(shape[::-1], Image.Resampling.BILINEAR)) for a in (image + delta, image)
    ]
    out["pillow"] = float(((pil[0] - pil[1]) * code[0]).sum() / (code * code).sum())
    return out


def _perturbation(image: np.ndarray, code: np.ndarray, eps: float, name: str) -> np.ndarray:
    """``copy``: the code upsampled by nearest neighbour (in the valid range); ``qQ``: the pre-image at quantile Q."""
    if name == "copy":
        copy = torch.nn.functional.interpolate(torch.from_numpy(code)[None], size=image.shape[1:], mode="nearest")
        return np.clip(image + copy[0].numpy(), 0, 1) - image
    return preimage(image, [code], eps, quantile=float(name[1:]))


def main() -> None:
    torch.set_num_threads(1)
    eps = 8 / 255
    rows = []
    for path in sorted((DATA / "images").glob("*.png"))[:8]:
        image = np.asarray(Image.open(path), dtype=np.float32)[None] / 255
        mask = np.asarray(Image.open(DATA / "masks" / path.name))
        shape = WorkingGrid.parse("size:128").shapes_for(image.shape[1:])[0]
        small = np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))
        for cell in CELLS:
            code = eps * nyquist_coded(small, 1, shape, cell)
            for name in ("copy", *(f"q{q:g}" for q in QUANTILES)):
                start = time.perf_counter()
                delta = _perturbation(image, code, eps, name)
                seconds = time.perf_counter() - start
                psnr = float(10 * np.log10(1 / np.mean(delta.astype(np.float64) ** 2)))
                rows.append({"image": path.name, "cell": cell, "pre_image": name, "seconds": seconds, "psnr": psnr,
                             **_kept(image, delta, code)})
    summary = {}
    for cell in CELLS:
        for name in ("copy", *(f"q{q:g}" for q in QUANTILES)):
            sel = [r for r in rows if r["cell"] == cell and r["pre_image"] == name]
            summary[f"cell{cell}_{name}"] = {
                k: round(float(np.mean([r[k] for r in sel])), 3)
                for k in ("antialias", "area", "linear", "pillow", "psnr", "seconds")
            }
            print(f"cell {cell} {name:>5}: {summary[f'cell{cell}_{name}']}")
    out = REPO / "benchmarks/results/grid_survival.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "grid_survival",
                "images": len(rows) // (len(CELLS) * (len(QUANTILES) + 1)),
                "grid": "size:128",
                "eps": "8/255",
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
