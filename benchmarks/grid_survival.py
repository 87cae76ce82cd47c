"""What a trainer's resize keeps of a working-grid code: the nearest-neighbour copy against ``preimage``.

For the HC18 test fixtures (``tests/data/hc18``, native 400 x 270), the Nyquist code of the
foreground on the letterboxed 128-pixel working grid is mapped to native pixels by nearest
neighbour and by :func:`ulmed.core.grid.preimage` (0, 5, 10, 20 and 60 PGD steps, cells 1, 2 and 3). Each
is resized back with every kernel of :class:`ulmed.core.grid.Kernel` and with Pillow; the
figure is the projection of the resized perturbation onto the code (1: all of it kept).

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
STEPS = (0, 5, 10, 20, 60)
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
            for steps in STEPS:
                start = time.perf_counter()
                delta = preimage(image, [code], eps, n_steps=steps)
                rows.append(
                    {
                        "image": path.name,
                        "cell": cell,
                        "steps": steps,
                        "seconds": time.perf_counter() - start,
                        **_kept(image, delta, code),
                    }
                )
    summary = {}
    for cell in CELLS:
        for steps in STEPS:
            sel = [r for r in rows if r["cell"] == cell and r["steps"] == steps]
            summary[f"cell{cell}_steps{steps}"] = {
                k: round(float(np.mean([r[k] for r in sel])), 3)
                for k in ("antialias", "area", "linear", "pillow", "seconds")
            }
            print(f"cell {cell} steps {steps:>2}: {summary[f'cell{cell}_steps{steps}']}")
    out = REPO / "benchmarks/results/grid_survival.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "grid_survival",
                "images": len(rows) // (len(CELLS) * len(STEPS)),
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
