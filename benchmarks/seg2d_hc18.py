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

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"

MODES = {
    "quick": {"size": 48, "train": 64, "test": 48, "epochs": 8, "victims": ["unet", "segresnet", "attention_unet"],
              "min_min": {"rounds": 3, "train_steps": 15, "pgd_steps": 8}},
    "full": {"size": 64, "train": None, "test": None, "epochs": 20, "victims": ["unet", "segresnet", "attention_unet"],
             "min_min": {"rounds": 6, "train_steps": 30, "pgd_steps": 10}},
}
DEFENSES = ["none", "augmentation", "jpeg75", "mix0.5"]
METHODS = {"random": {}, "lsp": {}, "em": "min_min", "salm": "min_min"}


def working_copy(dst: Path, size: int, train: int | None, test: int | None) -> Path:
    """HC18's train/test rows as ``size`` x ``size`` PNGs (letterboxed) with masks and index.

    ``test=0`` leaves the test split out (the folder that gets protected holds the train
    split only, so the min-min never sees a test image).
    """
    import numpy as np
    from PIL import Image

    from ulmed.eval.data import load_hc18

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
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.train import TrainConfig
    from ulmed.pipeline.protect import protect_path, summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    m = MODES[mode]
    out = REPO / "benchmarks/results" / f"seg2d_hc18{'_quick' if args.quick else ''}"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clean = working_copy(tmp / "hc18", m["size"], m["train"], m["test"])
        train_only = working_copy(tmp / "hc18_train", m["size"], m["train"], 0)
        protected = {}
        for method, options in METHODS.items():
            t0 = time.perf_counter()
            opts = dict(m["min_min"]) if options == "min_min" else dict(options)
            if method == "salm":
                opts["rho"] = 0.1
            manifest = protect_path(train_only, tmp / method, method=method, eps=args.eps, seed=args.seed, device="cpu",
                                    method_options=opts)
            s = summarize(manifest)
            print(f"protected with {method}: {s['records']} images in {time.perf_counter() - t0:.1f} s, "
                  f"PSNR {s['psnr_min']:.1f}-{s['psnr_max']:.1f} dB", flush=True)
            protected[method] = tmp / method
        if out.exists():
            shutil.rmtree(out)
        config = TrainConfig(epochs=m["epochs"], batch_size=8, lr=1e-3, seed=args.seed, device="cpu", num_threads=2)
        run_evaluation(clean, protected, out, dataset="hc18", victims=m["victims"], defenses=DEFENSES,
                                train_config=config, size=(m["size"], m["size"]), seed=args.seed,
                                progress=lambda line: print(line, flush=True))
    print((out / "report.md").read_text())
    print(f"wall time {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
