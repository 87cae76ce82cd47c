"""Does the UnSeg generator protect? Protect HC18 train with it, train a UNet victim, test on clean HC18.

The HC18 train split is loaded at the victim's working resolution (64 x 64, letterboxed),
protected in memory by ``--method unseg`` (one generator forward pass per image, prompted by
its mask; eps 8/255 inside the mask, 2/255 outside by default) and, as the control, by
``random`` at the same budget. A MONAI UNet victim (small, Adam) is trained on each copy
with the untouched masks and tested on the clean test split. Reported: test Dice, the ratio
to the clean-trained victim, PSNR/SSIM, and images per second of the protection.

With ``--baselines`` em and salm (their default settings, the same eps) protect the same
images in the same run, so the speed ratio compares like with like: images per second
counts everything a method does for the set (em's and salm's surrogate fits included; the
generator's loading excluded, as it happens once per process). UnSeg runs its generator on one
thread by default (its bytes then do not depend on the machine or ``--workers``); with
``--speed-only`` and ``--threads N > 1`` a row ``unseg_tN`` adds it on the process's N threads;
``--speed-only`` also times ``unseg_bf16`` (``precision=bf16``: bfloat16 autocast, one thread).

``--size HxW`` loads the images at another size (letterboxed; HC18's files are 270 x 400, so
``--size 270x400`` is the files as they are). The generator works on its own 64 x 64 input
whatever the size, while em and salm optimise every pixel, so the speed ratio grows with the
size; ``--limit N`` takes the first N train images (em takes about 2 s an image at 270 x 400).

Usage:
    python benchmarks/unseg_effect.py --quick          # 96 train / 64 test images, 12 epochs
    python benchmarks/unseg_effect.py                  # full split, 20 epochs
    python benchmarks/unseg_effect.py --baselines      # + em and salm, speed ratio
    python benchmarks/unseg_effect.py --baselines --speed-only   # images/s only (no victims)
    python benchmarks/unseg_effect.py --generator models/other.pt --eps-bg 0 --tag other
    python benchmarks/unseg_effect.py --baselines --speed-only --size 270x400 --limit 48 --tag native
    python benchmarks/unseg_effect.py --defense flip_jitter --tag flip_jitter   # victims with flips + jitter

Writes benchmarks/results/unseg_effect_hc18[_quick][_speed][_TAG].json. Settings are fixed per mode.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETTINGS = {
    "quick": {"train_limit": 96, "test_limit": 64, "epochs": 12},
    "full": {"train_limit": None, "test_limit": None, "epochs": 20},
}


def _protect(
    images: np.ndarray, masks: np.ndarray, method: str, eps: str, options: dict[str, Any], seed: int
) -> tuple[np.ndarray, float]:
    """Protect ``(N, 1, H, W)`` [0, 1] images in memory; returns them and images per second.

    Records go to ``protect_many`` ``batch_hint`` at a time, as ``ulmed protect`` hands them
    over (unseg: its batch size, one shared forward pass per batch; em, salm, random: one).
    """
    from ulmed.io.record import IntensityMapping, Record
    from ulmed.pipeline.protect import build_method

    protector = build_method(method, eps, seed, "cpu", **options)
    mapping = IntensityMapping(0.0, 1.0, 0.0, 1.0, quantum=0.0)
    records = [
        Record(f"{i}", images[i].astype(np.float64), mapping, 2, "image", target=masks[i]) for i in range(len(images))
    ]
    start = time.perf_counter()
    if protector.needs_fit:  # em and salm optimise over the whole set first
        protector.fit(records)
    step = max(1, protector.batch_hint)
    out = [p.image for i in range(0, len(records), step) for p in protector.protect_many(records[i : i + step])]
    rate = len(images) / (time.perf_counter() - start)
    return np.stack(out).astype(np.float32), rate


def _victim(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, epochs: int, seed: int,
    defense: str = "none",
) -> float:
    from ulmed.eval.defenses import build_defense
    from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim
    from ulmed.eval.victims import build_victim

    model = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, seed=seed, device="cpu")
    augment = None if defense == "none" else build_defense(defense).augment
    train_victim(model, train_x, train_y, task="segmentation", num_classes=2, config=config, augment=augment)
    return float(evaluate_victim(model, test_x, test_y, task="segmentation", num_classes=2, config=config)["dice"])


def _size(text: str) -> tuple[int, int]:
    """``"64"`` or ``"270x400"`` -> (height, width)."""
    from ulmed.cli.flags import parse_sizes
    from ulmed.errors import ConfigError

    try:
        parts = parse_sizes(text.lower(), "a size is N or HxW")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is N or HxW, got {text!r}")
    return (parts[0], parts[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--generator", default=str(REPO / "models" / "unseg_tiny_hc18.pt"))
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--eps-bg", default="2/255")
    parser.add_argument("--prompt", default="mask", choices=["mask", "box", "points"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--baselines", action="store_true", help="also protect with em and salm (defaults) in the same run"
    )
    parser.add_argument("--speed-only", action="store_true", help="measure images/s only: train no victims")
    parser.add_argument("--defense", default="none", help="the victims' training defense (ulmed.eval.defenses)")
    parser.add_argument("--size", type=_size, default=(64, 64), help="HxW the images are letterboxed to")
    parser.add_argument("--limit", type=int, default=None, help="the first N train images (default: the mode's)")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    args = parser.parse_args()

    import torch
    from benchmark_data import load_hc18

    from ulmed.eval.imperceptibility import imperceptibility

    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    train_limit = args.limit if args.limit is not None else s["train_limit"]
    train_x, train_y, _ = load_hc18(DATA / "hc18", "train", size=args.size, limit=train_limit)
    test_x, test_y, _ = load_hc18(DATA / "hc18", "test", size=args.size, limit=s["test_limit"])
    rows: list[dict[str, Any]] = []
    variants = {
        "clean": None,
        "random": ("random", {}),
        "unseg": ("unseg", {"generator": args.generator, "eps_bg": args.eps_bg, "prompt": args.prompt}),
    }
    if args.speed_only and args.threads > 1:  # the generator on all the process's threads (its default is 1)
        variants[f"unseg_t{args.threads}"] = ("unseg", {**variants["unseg"][1], "threads": args.threads})
    if args.speed_only:  # bfloat16 forward passes (autocast), one thread
        variants["unseg_bf16"] = ("unseg", {**variants["unseg"][1], "precision": "bf16"})
    if args.baselines:
        variants.update({"em": ("em", {}), "salm": ("salm", {})})
    for name, spec in variants.items():
        start = time.perf_counter()
        if spec is None:
            protected, rate = train_x, float("nan")
        else:
            protected, rate = _protect(train_x, train_y, spec[0], args.eps, spec[1], args.seed)
        stats = [imperceptibility(train_x[i], protected[i]) for i in range(len(train_x))]
        psnr = [x["psnr"] for x in stats if np.isfinite(x["psnr"])]
        dice = (float("nan") if args.speed_only
                else _victim(protected, train_y, test_x, test_y, s["epochs"], args.seed, args.defense))
        rows.append(
            {
                "method": name,
                "dice": None if args.speed_only else round(dice, 4),
                "psnr": round(float(np.mean(psnr)), 2) if psnr else None,
                "ssim": round(float(np.mean([x["ssim"] for x in stats])), 4),
                "images_per_s": None if np.isnan(rate) else float(f"{rate:.4g}"),
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    clean = rows[0]["dice"]
    for r in rows:
        r["dice_ratio"] = round(r["dice"] / clean, 4) if clean and r["dice"] is not None else None
    rates = {r["method"]: r["images_per_s"] for r in rows}
    speedup = {m: round(rates["unseg"] / rates[m], 1) for m in ("em", "salm") if rates.get(m)}
    if rates.get(f"unseg_t{args.threads}") and rates.get("em"):
        speedup[f"em, unseg on {args.threads} threads"] = round(rates[f"unseg_t{args.threads}"] / rates["em"], 1)
    if rates.get("unseg_bf16") and rates.get("em"):
        speedup["em, unseg in bf16"] = round(rates["unseg_bf16"] / rates["em"], 1)
    result = {
        "dataset": "hc18",
        "mode": mode,
        "size": list(args.size),
        "eps": args.eps,
        "eps_bg": args.eps_bg,
        "prompt": args.prompt,
        "generator": str(Path(args.generator).resolve().relative_to(REPO))
        if Path(args.generator).resolve().is_relative_to(REPO)
        else args.generator,
        "settings": s,
        "victim": None if args.speed_only else "unet (small)",
        "defense": args.defense,
        "train_images": len(train_x),
        "test_images": len(test_x),
        "rows": rows,
        "unseg_speedup": speedup,
        "threads": args.threads,
    }
    suffix = (
        ("_quick" if args.quick else "") + ("_speed" if args.speed_only else "") + (f"_{args.tag}" if args.tag else "")
    )
    out = REPO / "benchmarks" / "results" / f"unseg_effect_hc18{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['method']:8s} dice {r['dice']} ratio {r['dice_ratio']}  psnr {r['psnr']}  ssim {r['ssim']}  "
            f"{r['images_per_s']} img/s"
        )
    if speedup:
        print("unseg images/s over: " + ", ".join(f"{m} {v}x" for m, v in speedup.items()))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
