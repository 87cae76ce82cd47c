"""Throughput and peak memory of a protection run (read + random noise + write + manifest).

One run per kind of data, each in a fresh process so its peak memory is its own:

* images: HC18 ultrasound PNGs from ../shared/data/hc18;
* nifti: MSD hippocampus volumes from ../shared/data/msd_hippocampus;
* dicom: an export built from real files: pydicom's 4-slice CT series
  (dicomdirtests/77654033/CT2), CT_small, MR_small, and the multi-frame MR and 512x512 CT
  that pydicom-data ships; 1 (quick) or 10 (full) copies, each under new UIDs.

Usage:
    python benchmarks/io_throughput.py --quick     # about a minute on 2 CPU cores
    python benchmarks/io_throughput.py             # full: every HC18 image and hippocampus volume

Writes benchmarks/results/io_throughput[_quick].json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _dicom_export(dst: Path, copies: int) -> Path:
    """Lay out a small real DICOM export: each copy of the real files gets its own UIDs.

    Copy ``i`` re-issues StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID
    deterministically, as if it were another patient's study, so every copy is its own series.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ct_series = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/77654033/CT2"
    singles = [
        Path(get_testdata_file(n, download=False))
        for n in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "693_UNCI.dcm")
    ]
    sources = [(f, f"ct2/{f.name}") for f in sorted(ct_series.iterdir())] + [(f, f"single/{f.name}") for f in singles]
    for i in range(copies):
        for src, rel in sources:
            ds = pydicom.dcmread(src)
            for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(ds, tag, generate_uid(entropy_srcs=[f"copy{i}", str(getattr(ds, tag))]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            (dst / f"study{i}" / rel).parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dst / f"study{i}" / rel)
    return dst


def _subset(kind: str, n: int | None, tmp: Path) -> Path:
    """A folder with the first ``n`` items of a data set (symlinked, read-only sources)."""
    if kind == "dicom":
        return _dicom_export(tmp / "dicom", copies=1 if n else 10)
    src = DATA / ("hc18/images" if kind == "images" else "msd_hippocampus/images")
    files = sorted(src.iterdir())[:n] if n else sorted(src.iterdir())
    dst = tmp / kind
    dst.mkdir()
    for f in files:
        (dst / f.name).symlink_to(f)
    return dst


def _run(kind: str, n: int | None, queue: mp.Queue) -> None:
    from ulmed.pipeline.protect import protect_path, summarize

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = _subset(kind, n, tmp)
        in_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() or p.is_symlink())
        start = time.perf_counter()
        manifest = protect_path(src, tmp / "out", method="random", eps="8/255", seed=0)
        wall = time.perf_counter() - start
        s = summarize(manifest)
        queue.put(
            {
                "kind": kind,
                "records": s["records"],
                "files_written": s["written"],
                "failed": s["failed"],
                "input_MB": round(in_bytes / 1e6, 2),
                "wall_s": round(wall, 2),
                "records_per_s": round(s["records"] / wall, 2),
                "MB_per_s": round(in_bytes / 1e6 / wall, 2),
                "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "psnr_min": s["psnr_min"],
                "psnr_max": s["psnr_max"],
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset of each data set")
    args = parser.parse_args()
    n = 40 if args.quick else None
    ctx = mp.get_context("spawn")
    rows = []
    for kind in ("images", "nifti", "dicom"):
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(kind, n, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    result = {
        "benchmark": "io_throughput",
        "mode": "quick" if args.quick else "full",
        "machine": {"cpus": mp.cpu_count(), "python": platform.python_version()},
        "rows": rows,
    }
    out = REPO / "benchmarks/results" / f"io_throughput{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{'kind':8s} {'records':>8s} {'files':>6s} {'MB':>7s} {'wall s':>7s} {'rec/s':>7s} {'MB/s':>6s} "
        f"{'peak MB':>8s} {'PSNR dB':>12s}"
    )
    for r in rows:
        psnr = f"{r['psnr_min']:.1f}-{r['psnr_max']:.1f}" if r["psnr_min"] else "-"
        print(
            f"{r['kind']:8s} {r['records']:8d} {r['files_written']:6d} {r['input_MB']:7.2f} {r['wall_s']:7.2f} "
            f"{r['records_per_s']:7.2f} {r['MB_per_s']:6.2f} {r['peak_rss_MB']:8.1f} {psnr:>12s}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
