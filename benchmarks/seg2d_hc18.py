"""HC18 through the whole product: working copy -> ``ulmed protect`` per method -> ``ulmed evaluate``.

1. A *working copy* of HC18's fixed splits is written as PNG at the victims' resolution
   (letterboxed to ``--size``, masks by nearest neighbour), with its ``index.csv``; the
   protection is applied at that resolution (the native-size case, where the victim's own
   resize removes the noise, is measured by ``file_workflow_effect.py``).
2. Every method protects the working copy with :func:`ulmed.pipeline.protect.protect_path`
   (the code behind ``ulmed protect``), so outputs are real 8-bit PNGs.
3. :func:`ulmed.eval.grid.run_evaluation` (``ulmed evaluate``) trains each victim x defense
   on each protected copy, tests on the clean test split, and writes report.json/report.md
   and figures.

Usage:
    python benchmarks/seg2d_hc18.py --quick     # subset, small victims: a few minutes on 2 cores
    python benchmarks/seg2d_hc18.py             # all 421 train / 201 test images

Writes benchmarks/results/seg2d_hc18[_quick]/ (report.json, report.md, figures).
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from grid_common import (
    parse_mode_args,
    protect_and_evaluate,
    select_methods,
    select_mode,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"

MODES = {
    "quick": {
        "size": 48,
        "train": 64,
        "test": 48,
        "epochs": 8,
        "victims": ["unet", "segresnet", "attention_unet"],
        "min_min": {"rounds": 3, "train_steps": 15, "pgd_steps": 8},
    },
    "full": {
        "size": 64,
        "train": None,
        "test": None,
        "epochs": 8,
        "victims": ["unet", "segresnet", "attention_unet"],
        "min_min": {"rounds": 6, "train_steps": 30, "pgd_steps": 10},
    },
}
DEFENSES = ["none", "augmentation", "jpeg75", "mix0.5"]


def working_copy(dst: Path, size: int, train: int | None, test: int | None) -> Path:
    """HC18's train/test rows as ``size`` x ``size`` PNGs (letterboxed) with masks and index.

    ``test=0`` leaves the test split out (the folder that gets protected holds the train
    split only, so the min-min never sees a test image).
    """
    import numpy as np
    from benchmark_data import load_hc18
    from PIL import Image

    rows_out = []
    for split, limit in (("train", train), ("test", test)):
        if limit == 0:
            continue
        images, masks, keys = load_hc18(DATA, split, size=(size, size), limit=limit)
        for img, mask, key in zip(images, masks, keys, strict=True):
            name = Path(key).name
            (dst / "images").mkdir(parents=True, exist_ok=True)
            (dst / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(img[0] * 255).astype(np.uint8)).save(dst / "images" / name)
            Image.fromarray((mask * 255).astype(np.uint8)).save(dst / "masks" / name)
            rows_out.append({"image": f"images/{name}", "mask": f"masks/{name}", "split": split})
    with open(dst / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "mask", "split"])
        writer.writeheader()
        writer.writerows(rows_out)
    return dst


def main() -> None:
    args, out = parse_mode_args(__doc__, "seg2d_hc18")
    m = select_mode(MODES, args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clean = working_copy(tmp / "hc18", m["size"], m["train"], m["test"])
        train_only = working_copy(tmp / "hc18_train", m["size"], m["train"], 0)
        protect_and_evaluate(
            clean,
            train_only,
            tmp,
            out,
            mode=m,
            defenses=m.get("defenses", DEFENSES),
            eps=args.eps,
            seed=args.seed,
            batch_size=8,
            methods=select_methods(args),
            learnability=args.learnability,
            size=(m["size"], m["size"]),
        )
    print(f"wall time {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
