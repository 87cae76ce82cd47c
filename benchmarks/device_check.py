"""Device check: em/salm PGD and UnSeg throughput on CUDA with mixed precision, and the same on the CPU.

One short command for a lent GPU (and for any machine): it needs nothing beyond the
repository. The images are the real HC18 ultrasound PNGs with their masks in tests/data/hc18
(25, repeated to ``--images``), letterboxed to ``--size`` and stored as 8-bit records, so
stored changes are whole steps of 1/255; UnSeg runs the shipped generator in models/.

A cell is one method on one device at one precision. What is timed is everything the method
does for the set, as ``ulmed protect`` does it: em and salm fit (surrogate training and PGD,
every round: the stop threshold is off, so all cells do the same work) and then protect;
UnSeg protects with ``protect_many``, ``batch_size`` images per forward pass (the generator
is loaded before the clock starts). Each timed run follows a warm-up on two images (CUDA
context, cuDNN kernels). On CUDA ``torch.cuda.synchronize()`` closes every timing and the
peak memory is ``torch.cuda.max_memory_allocated()`` since a reset at the start of the run.

Precisions: ``fp32``; ``bf16`` and ``fp16`` under ``torch.autocast``. em and salm use their
own ``amp=True`` path (:func:`ulmed.core.bilevel.min_min`: autocast in bf16, or in fp16 with
loss scaling where the GPU lacks bf16; the fp16 cell reports bf16 as unsupported to take that
path). That path is CUDA-only, so on the CPU em and salm run in fp32 alone. UnSeg runs its
generator under ``torch.autocast(device, dtype)``. Beside the speed every cell gives the
largest stored change (in 1/255; the budget is 8) and the share of stored values equal to the
reference: the same device's fp32 cell, and for CUDA fp32 the CPU's fp32 cell.

Usage:
    python benchmarks/device_check.py                  # --quick: 32 images, CUDA (if any) and CPU
    python benchmarks/device_check.py --full           # 96 images, the methods' default loop settings
    python benchmarks/device_check.py --devices cpu --methods unseg --images 4

Writes benchmarks/results/device_check.json (``--out`` for another file) and prints a table.
Without CUDA it runs the CPU part and says that CUDA was not available.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "hc18"
GENERATOR = REPO / "models" / "unseg_tiny_hc18.pt"
OUT = REPO / "benchmarks" / "results" / "device_check.json"
METHODS = ("em", "salm", "unseg")
DEVICES = ("cuda", "cpu")
#: Precisions tried per device (em and salm take only fp32 on the CPU: their amp is CUDA-only).
PRECISIONS = {"cuda": ("fp32", "bf16", "fp16"), "cpu": ("fp32", "bf16")}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODES = {
    "quick": {"images": 32, "rounds": 2, "train_steps": 10, "pgd_steps": 5},
    "full": {"images": 96, "rounds": 10, "train_steps": 20, "pgd_steps": 10},
}
EPS, EPS_BG = "8/255", "2/255"
WARMUP = 2


def load_records(n: int, size: int) -> list[Any]:
    """``n`` 8-bit HC18 records (images letterboxed to ``size``, with masks), the 25 repeated as needed."""
    from ulmed.eval.folders import find_eval_items
    from ulmed.eval.loading import Preprocess, load_items
    from ulmed.io.record import IntensityMapping, Record

    folder = find_eval_items(DATA)  # every item of the index: train, val, then test
    items = [item for split in ("train", "val", "test") for item in folder.items if folder.fixed[item.key] == split]
    images, masks, _, _ = load_items(items, Preprocess(size=(size, size)), 2)
    idx = np.arange(n) % len(images)
    mapping = IntensityMapping(0, 255, 0, 255, 1)
    return [
        Record(f"hc18/{i:04d}.png", np.rint(images[j] * 255).astype(np.uint8), mapping, 2, "image", target=masks[j])
        for i, j in enumerate(idx)
    ]


def build(
    method: str, device: str, precision: str, loop: dict[str, int], unseg_batch: int, rounds: int | None = None
) -> Any:
    """The method as a cell runs it (``rounds`` overrides the loop's, for the warm-up)."""
    from ulmed.pipeline.protect import build_method

    if method == "unseg":
        return build_method("unseg", EPS, 0, device, generator=str(GENERATOR), eps_bg=EPS_BG, batch_size=unseg_batch)
    return build_method(
        method,
        EPS,
        0,
        device,
        rounds=rounds or loop["rounds"],
        train_steps=loop["train_steps"],
        pgd_steps=loop["pgd_steps"],
        stop_threshold=2.0,
        amp=precision != "fp32",
    )


def skip_reason(method: str, device: str, precision: str) -> str | None:
    """Why a cell does not run here (None: it runs)."""
    if precision == "fp32":
        return None
    if method != "unseg" and device == "cpu":
        return "em/salm mixed precision (amp) is CUDA-only"
    if device == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bf16"
    return None


@contextlib.contextmanager
def precision_context(method: str, device: str, precision: str) -> Iterator[None]:
    """Autocast for UnSeg; for em/salm fp16, bf16 reported unsupported so that amp takes fp16 with loss scaling."""
    if precision == "fp32":
        yield
    elif method == "unseg":
        with torch.autocast(device_type=device, dtype=DTYPES[precision]):
            yield
    elif precision == "fp16":
        with mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: False):
            yield
    else:
        yield


def protect_all(method: Any, records: Sequence[Any]) -> list[Any]:
    """What ``ulmed protect`` does with the records: fit if needed, then ``protect_many`` by ``batch_hint``."""
    if method.needs_fit:
        method.fit(records)
    step = max(1, method.batch_hint)
    return [p for i in range(0, len(records), step) for p in method.protect_many(records[i : i + step])]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_cell(
    method: str, device: str, precision: str, records: Sequence[Any], loop: dict[str, int], unseg_batch: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Warm up, then time one cell; returns its row and the stored images ``(N, ...)``."""
    with precision_context(method, device, precision):
        if method == "unseg":
            protector = build(method, device, precision, loop, unseg_batch)
            protect_all(protector, records[:WARMUP])
        else:
            protect_all(build(method, device, precision, loop, unseg_batch, rounds=1), records[:WARMUP])
            protector = build(method, device, precision, loop, unseg_batch)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        start = time.perf_counter()
        out = protect_all(protector, records)
        _sync(device)
        seconds = time.perf_counter() - start
    stored = np.stack([p.image for p in out])
    change = float(np.abs(stored.astype(np.float64) - np.stack([r.image for r in records])).max())
    row = {
        "images": len(records),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(records) / seconds, 2),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "max_change_255": change,
    }
    if method != "unseg":
        row["rounds_run"] = sum(len(h) for h in protector.history.values())
    return row, stored


def environment() -> dict[str, Any]:
    """Versions and the hardware the figures belong to."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    return env


def agreement(rows: list[dict[str, Any]], stored: dict[tuple[str, str, str], np.ndarray]) -> None:
    """Share of stored values equal to the reference cell (same device fp32; CUDA fp32: CPU fp32)."""
    for row in rows:
        key = (row["method"], row["device"], row["precision"])
        if key not in stored:
            continue
        ref = (key[0], "cpu", "fp32") if key[1:] == ("cuda", "fp32") else (key[0], key[1], "fp32")
        if ref != key and ref in stored:
            row["agree_with"] = f"{ref[1]} {ref[2]}"
            row["agree"] = round(float(np.mean(stored[key] == stored[ref])), 4)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table."""
    head = (
        f"{'method':7s} {'device':6s} {'prec':5s} {'images/s':>9s} {'seconds':>8s} {'peak GPU MB':>11s} "
        f"{'max chg':>7s} {'agree':>14s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"{r['method']:7s} {r['device']:6s} {r['precision']:5s} {r.get('skipped') or r.get('error')}")
            continue
        peak = "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.1f}"
        agree = f"{r['agree']:.4f} ({r['agree_with']})" if "agree" in r else ""
        lines.append(
            f"{r['method']:7s} {r['device']:6s} {r['precision']:5s} {r['images_per_s']:9.2f} {r['seconds']:8.2f} "
            f"{peak:>11s} {r['max_change_255']:7.1f} {agree:>14s}"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: 32 images, 2 short rounds for em/salm")
    mode.add_argument("--full", action="store_true", help="96 images, the methods' default rounds and steps")
    parser.add_argument("--devices", default=",".join(DEVICES), help="comma-separated: cuda, cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: em, salm, unseg")
    parser.add_argument(
        "--precisions", default=None, help="comma-separated subset of fp32, bf16, fp16 (default: all per device)"
    )
    parser.add_argument("--images", type=int, default=None, help="images per cell (default: the mode's)")
    parser.add_argument(
        "--size", type=int, default=64, help="letterboxed image side (the shipped generator's input is 64)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="em/salm min-min rounds (default: the mode's)")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--pgd-steps", type=int, default=None)
    parser.add_argument("--unseg-batch", type=int, default=16, help="UnSeg images per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the check; returns the result that is also written to ``--out``."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "full" if args.full else "quick"
    loop = {k: v for k, v in MODES[mode].items() if k != "images"}
    for name in ("rounds", "train_steps", "pgd_steps"):
        if getattr(args, name) is not None:
            loop[name] = getattr(args, name)
    n = args.images or MODES[mode]["images"]
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    notes = []
    if "cuda" in devices and not torch.cuda.is_available():
        notes.append("CUDA was not available: only the CPU part ran")
        devices.remove("cuda")
    records = load_records(n, args.size)
    wanted = None if args.precisions is None else {p.strip() for p in args.precisions.split(",")}
    rows: list[dict[str, Any]] = []
    stored: dict[tuple[str, str, str], np.ndarray] = {}
    for device in sorted(devices, key=lambda d: d != "cpu"):  # the CPU first: CUDA fp32 is compared with it
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            for precision in PRECISIONS[device]:
                if wanted is not None and precision not in wanted:
                    continue
                row: dict[str, Any] = {"method": method, "device": device, "precision": precision}
                rows.append(row)
                if (why := skip_reason(method, device, precision)) is not None:
                    row["skipped"] = why
                    continue
                try:
                    got, stored[(method, device, precision)] = timed_cell(
                        method, device, precision, records, loop, args.unseg_batch
                    )
                    row.update(got)
                except Exception as exc:  # noqa: BLE001 - a device check reports what fails and goes on
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                print(json.dumps(row), flush=True)
    agreement(rows, stored)
    result = {
        "mode": mode,
        "images": n,
        "size": args.size,
        "eps": EPS,
        "eps_bg": EPS_BG,
        "loop": loop,
        "unseg_batch": args.unseg_batch,
        "data": str(DATA.relative_to(REPO)),
        "generator": str(GENERATOR.relative_to(REPO)),
        "environment": environment(),
        "notes": notes,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    for note in notes:
        print(note)
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
