"""Protection through the real file workflow: protect the PNG files at native size, let the victim resize.

``protect_effect.py`` protects the train split at the victim's working resolution. A data
owner protects the files as they are (HC18: about 400 x 270 px) and the unauthorised
trainer then resizes them to its own input size. This script measures that case for the
methods that run quickly at native size: it writes the HC18 train split (images + masks +
index) to a temporary data set, runs ``protect_path`` on it (the same code as
``ulmed protect``), loads the protected PNGs with the victim's preprocessing
(``load_protected``, bilinear resize to 64 x 64) and trains/tests a MONAI UNet as in
``protect_effect.py``.

Usage:
    python benchmarks/file_workflow_effect.py [--methods clean,random,lsp] [--size 64]
    python benchmarks/file_workflow_effect.py --methods clean,lsp --lsp-block 8 --lsp-tile 32
    python benchmarks/file_workflow_effect.py --methods clean,unseg     # the shipped UnSeg generator

Writes benchmarks/results/file_workflow_effect_hc18[_lsp_blockB_tileT][_METHODS].json (the
methods named when they are not the default three).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from grid_common import data_set_copy

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"
DEFAULT_METHODS = "clean,random,lsp"


def _train_split_copy(dst: Path) -> Path:
    """A data set folder holding only HC18's train rows (images, masks, index.csv)."""
    with open(DATA / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    return data_set_copy(dst, DATA, rows)


def main() -> None:
    import numpy as np
    import torch

    from ulmed.eval.data import load_eval_data, load_protected
    from ulmed.eval.imperceptibility import imperceptibility
    from ulmed.eval.loading import Preprocess
    from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim
    from ulmed.eval.victims import build_victim
    from ulmed.pipeline.protect import protect_path, summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--lsp-block", type=int, default=1, help="lsp: block size at native resolution")
    parser.add_argument("--lsp-tile", type=int, default=8, help="lsp: pattern period at native resolution")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size = (args.size, args.size)
    data = load_eval_data(DATA, preprocess=Preprocess(size=size))  # index.csv's fixed split
    clean_train, train_masks = data.train_images, data.train_targets
    test_images, test_masks = data.test_images, data.test_targets
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        src = _train_split_copy(Path(tmp_name) / "hc18_train")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            start = time.perf_counter()
            if method == "clean":
                images, native_psnr = clean_train, None
            else:
                out = Path(tmp_name) / method
                options = {"block": args.lsp_block, "tile": args.lsp_tile} if method == "lsp" else {}
                manifest = protect_path(
                    src, out, method=method, eps=args.eps, seed=0, device="cpu", method_options=options
                )
                native_psnr = summarize(manifest)["psnr_min"]
                images = load_protected(data, out)
            protect_s = time.perf_counter() - start
            # what is left of the perturbation after the victim's resize
            after = [imperceptibility(clean_train[i], images[i]) for i in range(len(images))]
            model = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=0)
            config = TrainConfig(epochs=args.epochs, batch_size=8, lr=1e-3, seed=0, device="cpu")
            train_victim(model, images, train_masks, task="segmentation", num_classes=2, config=config)
            dice = float(
                evaluate_victim(model, test_images, test_masks, task="segmentation", num_classes=2, config=config)[
                    "dice"
                ]
            )
            rows.append(
                {
                    "method": method,
                    "dice": round(dice, 4),
                    "protect_s": round(protect_s, 1),
                    "psnr_native_min": native_psnr,
                    "linf_after_resize": round(float(max(a["linf"] for a in after)), 5),
                    "rms_after_resize": round(float(np.mean([a["rms"] for a in after])), 6),
                }
            )
            print(rows[-1], flush=True)
    clean = next((r["dice"] for r in rows if r["method"] == "clean"), None)
    for r in rows:
        r["dice_ratio"] = round(r["dice"] / clean, 4) if clean else None
    suffix = "" if (args.lsp_block, args.lsp_tile) == (1, 8) else f"_lsp_block{args.lsp_block}_tile{args.lsp_tile}"
    if args.methods != DEFAULT_METHODS:
        suffix += "_" + "-".join(m.strip() for m in args.methods.split(",") if m.strip())
    out_path = REPO / f"benchmarks/results/file_workflow_effect_hc18{suffix}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "benchmark": "file_workflow_effect",
                "dataset": "hc18",
                "victim_size": size,
                "epochs": args.epochs,
                "eps": args.eps,
                "lsp": {"block": args.lsp_block, "tile": args.lsp_tile},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
