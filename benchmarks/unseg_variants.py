"""Which UnSeg training recipe protects? Train generator variants briefly, then measure each on the quick split.

Each variant is ``configs/unseg/tiny.yaml`` with a few options overridden and a short time
limit (``--minutes``, default 6). It is trained on the HC18 train split (``ulmed
train-generator``), then applied to the first 96 train images at 64 x 64 (8/255 inside the
mask, 2/255 outside, mask prompts) and a UNet victim is trained on them and tested on 64
clean test images, exactly as in ``unseg_effect.py --quick`` (whose clean victim scores the
reference Dice). ``--defense`` adds trainer defenses (the clean victim is retrained under
each). ``--fixed`` measures fixed, image-independent maps scaled the same way: the ceiling of
a noise that ignores the image.

Usage:
    python benchmarks/unseg_variants.py                       # every variant, no defense
    python benchmarks/unseg_variants.py --variants paper --defense none,flip_jitter,augmentation
    python benchmarks/unseg_variants.py --variants none --fixed iid,tile4,dc

Writes benchmarks/results/unseg_variants_quick.json (rows are appended per run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import protect_effect  # noqa: E402  (after the sys.path insert)
import unseg_effect  # noqa: E402

#: variant -> overrides of configs/unseg/tiny.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},  # label modification, eps generalisation (1/255 -> 8/255), 3 generator : 1 surrogate epochs
    "no_lm_eps8": {"label_modification": False, "train_eps": "8/255", "train_eps_bg": "2/255"},
    "no_lm_eps8_noprompt": {
        "label_modification": False,
        "train_eps": "8/255",
        "train_eps_bg": "2/255",
        "surrogate_prompt": "none",
    },
    "paper_eot": {"augment": "standard"},
}
OUT = REPO / "benchmarks" / "results" / "unseg_variants_quick.json"


def _fixed_map(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name == "iid":
        return rng.choice([-1.0, 1.0], size=(64, 64))
    if name == "tile4":
        return np.tile(rng.choice([-1.0, 1.0], size=(4, 4)), (16, 16))
    if name == "dc":
        return np.ones((64, 64))
    raise SystemExit(f"unknown fixed map {name!r}; choose iid, tile4 or dc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, or 'none'")
    parser.add_argument("--defense", default="none")
    parser.add_argument("--fixed", default="", help="fixed maps: iid, tile4, dc")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--work", default="/tmp/ulmed_unseg_variants")
    args = parser.parse_args()

    import torch
    from benchmark_data import load_hc18

    from ulmed.eval.imperceptibility import imperceptibility

    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_x, train_y, _ = load_hc18(unseg_effect.DATA / "hc18", "train", size=(64, 64), limit=96)
    defenses = [d for d in args.defense.split(",") if d]
    clean = {d: protect_effect._victim_dice("hc18", "quick", train_x, d, 0)["dice"] for d in defenses}
    results = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
    base = yaml.safe_load((REPO / "configs/unseg/tiny.yaml").read_text())

    def record(name: str, protected: np.ndarray, extra: dict[str, Any]) -> None:
        psnr = float(np.mean([imperceptibility(train_x[i], protected[i])["psnr"] for i in range(len(train_x))]))
        for d in defenses:
            dice = protect_effect._victim_dice("hc18", "quick", protected, d, 0)["dice"]
            row = {
                "variant": name,
                "defense": d,
                "dice": dice,
                "clean_dice": clean[d],
                "dice_ratio": round(dice / clean[d], 3),
                "psnr": round(psnr, 2),
                **extra,
            }
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            OUT.write_text(json.dumps(results, indent=2) + "\n")

    names = [] if args.variants == "none" else [v for v in args.variants.split(",") if v]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        config = {**base, **VARIANTS[name], "max_minutes": args.minutes}
        cfg_path, ckpt = work / f"{name}.yaml", work / f"{name}.pt"
        cfg_path.write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ulmed.cli",
                "--seed",
                "0",
                "train-generator",
                "--data",
                str(unseg_effect.DATA / "hc18/images"),
                "--masks",
                str(unseg_effect.DATA / "hc18/masks"),
                "--config",
                str(cfg_path),
                "--out",
                str(ckpt),
            ],
            check=True,
        )
        train_s = round(time.perf_counter() - start, 1)
        options = {"generator": str(ckpt), "eps_bg": "2/255", "prompt": "mask"}
        protected, _ = unseg_effect._protect(train_x, train_y, "unseg", "8/255", options, 0)
        record(name, protected, {"overrides": VARIANTS[name], "train_minutes": args.minutes, "train_wall_s": train_s})
    for name in [f for f in args.fixed.split(",") if f]:
        fg = (train_y > 0).astype(np.float32).reshape(train_x.shape)
        delta = _fixed_map(name)[None, None] * (2 / 255 + (6 / 255) * fg)
        record(f"fixed_{name}", np.clip(train_x + delta, 0, 1).astype(np.float32), {"overrides": None})


if __name__ == "__main__":
    main()
