"""Conversion speed against the I/O floor: ``ulmed protect`` beside a plain library loop, same files.

For each kind of data, three whole processes run on the same input, alternating, ``--rounds``
times (median wall time, peak RSS of each process from ``os.wait4``):

* the floor: a plain loop of the library that reads and writes the format
  - DICOM: pydicom reads each instance, decodes its pixels, sets them back with a new
    SOPInstanceUID and writes it;
  - NIfTI: nibabel loads each volume, reads its array and saves it with the same header;
  - PNG: Pillow opens each image, reads its array and saves it;
* ``ulmed protect --method none`` (conversion only);
* ``ulmed protect`` with the default method and metrics (for PNG also with ``--set grid=native``,
  the code on the file's own pixels, without the default's pre-image for a trainer at 128 px).

Data (all real): DICOM, an export laid out from pydicom-data's 512 x 512 CT slice ``693_UNCI``
(each series a stack of copies of it under new UIDs and positions) plus pydicom's 4-slice CT
series, CT_small and MR_small; PNG: HC18 ultrasound images with their masks; NIfTI: MSD
hippocampus volumes with their label maps (``ulmed protect --masks``: the default then codes
the masks, which is its real job; the floor loop reads and writes the masks too).
The quick mode reads ``tests/data`` and a small export (about a minute); ``--full`` reads the
benchmark data beside the repository (``../shared/data``) and an export of 15 series x 25 slices,
the size of the real MR export of issue 18.

Usage:
    python benchmarks/archive_speed.py            # quick
    python benchmarks/archive_speed.py --full
    python benchmarks/archive_speed.py --kinds dicom --workers 2   # adds an ulmed run with 2 workers
    python benchmarks/archive_speed.py --full --against 976bf67    # adds that commit's none/default

``--against REV`` checks REV out into a temporary git worktree and times its ``ulmed`` in the same
rounds (rows ``none@REV``, ``default@REV``): on a machine whose speed drifts by a third within an
hour, a change is measured against the code before it in one run, not against an older JSON.

Writes benchmarks/results/archive_speed[_full][_KINDS][_against-REV].json (KINDS when --kinds is given) and prints
a table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TESTS = REPO / "tests" / "data"

FLOOR = {
    "dicom": """
import sys, pathlib, pydicom
from pydicom.uid import generate_uid
src, dst = map(pathlib.Path, sys.argv[1:3])
for f in sorted(p for p in src.rglob("*") if p.is_file()):
    ds = pydicom.dcmread(f)
    arr = ds.pixel_array
    ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = dst / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
""",
    "nifti": """
import sys, pathlib, nibabel as nib, numpy as np
src, dst = map(pathlib.Path, sys.argv[1:3])
for f in sorted(src.rglob("*.nii.gz")):
    img = nib.load(f)
    arr = np.asarray(img.dataobj)
    out = dst / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), out)
""",
    "png": """
import sys, pathlib, numpy as np
from PIL import Image
src, dst = map(pathlib.Path, sys.argv[1:3])
for f in sorted(src.rglob("*.png")):
    with Image.open(f) as im:
        arr = np.asarray(im)
    out = dst / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(out)
""",
}


def dicom_export(dst: Path, n_series: int, n_slices: int) -> Path:
    """A DICOM export of real files: ``n_series`` stacks of the 512 x 512 CT slice, and pydicom's CT/MR files.

    Each stacked slice gets its own SOPInstanceUID, InstanceNumber and position, each stack its own
    Series/Study UIDs, so the export groups into ``n_series`` series of ``n_slices`` slices.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    slice_path = Path(get_testdata_file("693_UNCI.dcm", download=False))
    for s in range(n_series):
        study, series = generate_uid(entropy_srcs=[f"study{s // 3}"]), generate_uid(entropy_srcs=[f"series{s}"])
        for k in range(n_slices):
            ds = pydicom.dcmread(slice_path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            # named sources: "series1" + "10" and "series11" + "0" gave one UID to two slices
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"series{s}", f"slice{k}"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = k + 1
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, 2.5 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            (dst / f"study{s // 3}" / f"series{s}").mkdir(parents=True, exist_ok=True)
            ds.save_as(dst / f"study{s // 3}" / f"series{s}" / f"IM{k:04d}.dcm")
    ct2 = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/77654033/CT2"
    (dst / "ct2").mkdir()
    (dst / "single").mkdir()
    for f in sorted(ct2.iterdir()):
        shutil.copy(f, dst / "ct2" / f"{f.name}.dcm")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name, download=False), dst / "single" / name)
    return dst


#: The masks folder beside each image folder: a data set's masks are read, checked and written with it.
MASKS = {"png": ("hc18", "images", "masks"), "nifti": ("msd_hippocampus", "images", "labels")}


def folder_of(kind: str, full: bool, tmp: Path) -> Path:
    """The input of one kind (a fresh folder of copies, so every command reads the same files).

    PNG and NIfTI are segmentation data sets: ``images/`` and ``masks/`` (or ``labels/``) side by
    side, as a data-set author shares them; the floor loop reads and writes both.
    """
    if kind == "dicom":
        return dicom_export(tmp / "dicom", *((15, 25) if full else (3, 10)))
    base = SHARED if full else TESTS
    name, images, masks = MASKS[kind]
    dst = tmp / kind
    for sub in (images, masks):
        src = base / name / sub
        if not src.is_dir():
            raise SystemExit(f"{src} not found (--full reads the benchmark data beside the repository)")
        shutil.copytree(src, dst / sub)
    return dst


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` as its own process; (wall seconds, peak RSS MB of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({code}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def ulmed_command(tree: Path | None = None) -> list[str]:
    """``python -m ulmed`` of this checkout, or of the checkout at ``tree`` (its package first on the path)."""
    if tree is None:
        return [sys.executable, "-m", "ulmed"]
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from ulmed.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def commands(kind: str, src: Path, out: Path, workers: int, against: tuple[str, Path] | None = None,
             ) -> dict[str, list[str]]:
    """The commands to compare, by name; with ``against`` (a revision and its checkout) also that revision's."""
    inputs = ["-i", str(src)]
    if kind in MASKS:
        _, images, masks = MASKS[kind]
        inputs = ["-i", str(src / images), "--masks", str(src / masks)]
    ulmed = [*ulmed_command(), "-q", "--device", "cpu", "protect", *inputs]
    cmds = {
        "floor": [sys.executable, "-c", FLOOR[kind], str(src), str(out / "floor")],
        "none": [*ulmed, "-o", str(out / "none"), "--method", "none"],
        "default": [*ulmed, "-o", str(out / "default")],
    }
    if kind == "png":  # the default's pre-image for a trainer at 128 px against the code on the file's own grid
        cmds["grid_native"] = [*ulmed, "-o", str(out / "grid_native"), "--set", "grid=native"]
    if workers > 1:
        cmds[f"default_w{workers}"] = [*ulmed, "-o", str(out / f"default_w{workers}"), "--workers", str(workers)]
    if against is not None:
        rev, tree = against
        before = [*ulmed_command(tree), "-q", "--device", "cpu", "protect", *inputs]
        cmds[f"none@{rev}"] = [*before, "-o", str(out / f"none@{rev}"), "--method", "none"]
        cmds[f"default@{rev}"] = [*before, "-o", str(out / f"default@{rev}")]  # -o is the name: removed each round
    return cmds


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[tuple[str, Path] | None]:
    """A temporary git worktree of ``rev`` (removed afterwards), or None without one."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tree = Path(tmp_name) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            yield rev, tree
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def measure(kind: str, full: bool, rounds: int, workers: int, against: tuple[str, Path] | None = None) -> dict:
    """Alternate the commands of one kind ``rounds`` times; medians and ratios to the floor."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = folder_of(kind, full, tmp)
        files = sum(1 for p in src.rglob("*") if p.is_file())
        walls: dict[str, list[float]] = {}
        peaks: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, cmd in commands(kind, src, tmp / "out", workers, against).items():
                shutil.rmtree(tmp / "out" / name, ignore_errors=True)
                wall, peak = timed(cmd)
                walls.setdefault(name, []).append(wall)
                peaks.setdefault(name, []).append(peak)
    floor = statistics.median(walls["floor"])
    rows = {
        name: {
            "wall_s": round(statistics.median(w), 3),
            "walls_s": [round(x, 3) for x in w],
            "ratio_to_floor": round(statistics.median(w) / floor, 2),
            "peak_MB": round(max(peaks[name]), 1),
        }
        for name, w in walls.items()
    }
    if workers > 1:
        rows[f"default_w{workers}"]["speedup_vs_1_worker"] = round(
            rows["default"]["wall_s"] / rows[f"default_w{workers}"]["wall_s"], 2
        )
    if against is not None:  # this checkout's time over the revision's, measured in the same rounds
        rev = against[0]
        for name in ("none", "default"):
            rows[name][f"ratio_to_{rev}"] = round(rows[name]["wall_s"] / rows[f"{name}@{rev}"]["wall_s"], 3)
    return {"kind": kind, "files": files, "rows": rows}


def one_file_input(kind: str, folder: Path) -> Path:
    """A folder holding one real file of ``kind``: pydicom's CT_small, an HC18 image, a hippocampus volume."""
    folder.mkdir(parents=True)
    if kind == "dicom":
        from pydicom.data import get_testdata_file

        shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder)
    else:
        name, images, _ = MASKS[kind]
        shutil.copy(sorted((TESTS / name / images).iterdir())[0], folder)
    return folder


def one_file_runs(rounds: int, against: tuple[str, Path] | None = None) -> dict[str, float]:
    """Median wall seconds of a one-file run of each kind with ``lsp`` (the default) and ``none``: the start-up.

    With ``against``, the revision's runs alternate with this checkout's (keys ending ``@REV``).
    """
    trees = {"": None} | ({f"@{against[0]}": against[1]} if against is not None else {})
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in ("dicom", "png", "nifti"):
            src = one_file_input(kind, tmp / kind)
            for method, r, (tag, tree) in itertools.product(("lsp", "none"), range(rounds), trees.items()):
                cmd = [*ulmed_command(tree), "-q", "protect", "-i", str(src), "--method", method]
                # DICOM keeps its old key names: the JSON results of earlier runs compare with it
                key = (method if kind == "dicom" else f"{kind}_{method}") + tag
                walls.setdefault(key, []).append(timed([*cmd, "-o", str(tmp / f"o_{key}{r}")])[0])
    return {key: round(statistics.median(w), 3) for key, w in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full data sets and a 375-file DICOM export")
    parser.add_argument("--kinds", default="dicom,png,nifti", help="comma-separated: dicom, png, nifti")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--workers", type=int, default=1, help="also time the default with this many workers")
    parser.add_argument("--against", metavar="REV", help="also time this git revision's ulmed, in the same rounds")
    args = parser.parse_args()
    with checkout(args.against) as against:
        results = [measure(kind, args.full, args.rounds, args.workers, against) for kind in args.kinds.split(",")]
        one_file = one_file_runs(args.rounds, against)
    result = {
        "benchmark": "archive_speed",
        "mode": "full" if args.full else "quick",
        "rounds": args.rounds,
        "against": args.against,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "kinds": results,
        "one_file_run_s": one_file,
    }
    kinds = "" if args.kinds == parser.get_default("kinds") else "_" + args.kinds.replace(",", "-")
    kinds += f"_against-{args.against}" if args.against else ""
    out = REPO / "benchmarks/results" / f"archive_speed{'_full' if args.full else ''}{kinds}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'kind':6s} {'files':>5s} {'command':>16s} {'wall s':>8s} {'x floor':>8s} {'peak MB':>8s}")
    for r in results:
        for name, row in r["rows"].items():
            print(
                f"{r['kind']:6s} {r['files']:5d} {name:>16s} {row['wall_s']:8.2f} {row['ratio_to_floor']:8.2f} "
                f"{row['peak_MB']:8.1f}"
            )
    print(f"one-file runs (DICOM: CT_small): {one_file}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
