"""MSD hippocampus through the whole product: working copy -> ``ulmed protect`` -> ``ulmed evaluate``.

The 3D counterpart of ``seg2d_hc18.py``: a NIfTI working copy of the fixed splits at the
victims' shape (per-volume min/max to [0, 1], centre pad/crop to 40 x 56 x 40, float32, label
maps alongside), every method protects the train-only copy with ``protect_path``, and
``run_evaluation`` trains 3D victims x defenses and tests on the clean test split.

Usage:
    python benchmarks/seg3d_hippocampus.py --quick
        # 24 train / 12 test whole volumes, UNet, none + augmentation, 12 epochs
    python benchmarks/seg3d_hippocampus.py           # 121 train / 55 test, patches, 3 victims x 4 defenses, 5 epochs

Writes benchmarks/results/seg3d_hippocampus[_quick]/ (report.json, report.md, figures).
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
DATA = REPO.parent / "shared" / "data" / "msd_hippocampus"
SHAPE = (40, 56, 40)

#: In the full mode victims train on random 24 x 32 x 24 patches (MONAI RandCropByPosNegLabel)
#: and infer with sliding windows, as 3D trainers do: a quarter of the voxels per step, so the
#: grid fits (nearly) its hour on 2 cores. The quick mode trains on whole volumes. A patch's
#: random position shifts the noise against the network's stride grid, like the 2D ``aug-shift``
#: defense, so the two modes answer different questions (README).
PATCH = (24, 32, 24)
MODES = {
    "quick": {
        "train": 24,
        "test": 12,
        "epochs": 12,
        "victims": ["unet"],
        "defenses": ["none", "augmentation"],
        "min_min": {"rounds": 3, "train_steps": 10, "pgd_steps": 6},
    },
    "full": {
        "train": None,
        "test": None,
        "epochs": 5,
        "victims": ["unet", "segresnet", "attention_unet"],
        "defenses": ["none", "augmentation", "jpeg75", "mix0.5"],
        "patch": PATCH,
        "min_min": {"rounds": 6, "train_steps": 30, "pgd_steps": 10},
    },
}


def working_copy(dst: Path, train: int | None, test: int | None) -> Path:
    """The hippocampus splits as float32 NIfTI volumes of ``SHAPE`` with label maps and index.

    ``test=0`` leaves the test split out (the copy that gets protected holds train only).
    """
    import nibabel as nib
    import numpy as np
    from benchmark_data import load_hippocampus

    rows = []
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", train), ("test", test)):
        if limit == 0:
            continue
        images, labels, keys = load_hippocampus(DATA, split, shape=SHAPE, limit=limit)
        for img, lab, key in zip(images, labels, keys, strict=True):
            name = Path(key).name
            nib.save(nib.Nifti1Image(img[0].astype(np.float32), np.eye(4)), dst / "images" / name)
            nib.save(nib.Nifti1Image(lab.astype(np.uint8), np.eye(4)), dst / "labels" / name)
            rows.append({"image": f"images/{name}", "label": f"labels/{name}", "split": split})
    with open(dst / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return dst


def main() -> None:
    args, out = parse_mode_args(__doc__, "seg3d_hippocampus")
    m = select_mode(MODES, args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clean = working_copy(tmp / "hippocampus", m["train"], m["test"])
        train_only = working_copy(tmp / "hippocampus_train", m["train"], 0)
        protect_and_evaluate(
            clean,
            train_only,
            tmp,
            out,
            mode=m,
            defenses=m["defenses"],
            eps=args.eps,
            seed=args.seed,
            batch_size=4,
            methods=select_methods(args),
            learnability=args.learnability,
            shape=SHAPE,
        )
    print(f"wall time {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
