"""How long a quick audit takes on a few hundred 2D images, the way a data owner runs it.

A data owner has a plain images + masks folder (HC18 native-size PNGs, no index.csv), protects it
with ``ulmed protect`` (the default method) and asks ``ulmed audit --level quick`` what the
protection does to a trainer on that very data. Both commands run as whole processes, one after
the other; the benchmark records each one's wall time and the audit's ratios (``audit.json``).

Usage:
    python benchmarks/audit_time.py                 # 300 images (the quick audit's item cap)
    python benchmarks/audit_time.py --images 60     # a smaller run

Writes benchmarks/results/audit_time[_N].json (N when --images is not 300).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grid_common import data_set_copy

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hc18"


def plain_folder(dst: Path, n: int) -> Path:
    """The first ``n`` HC18 images of the index with their masks, without any split file."""
    with open(DATA / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return data_set_copy(dst, DATA, rows, index=False)


def timed(args: list[str]) -> float:
    """Run ``ulmed ARGS`` as a whole process; its wall time in seconds (exits on failure)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ulmed", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"ulmed {args[0]} failed:\n{done.stderr[-4000:]}")
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    out = REPO / "benchmarks/results" / ("audit_time.json" if args.images == 300 else f"audit_time_{args.images}.json")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        original = plain_folder(tmp / "hc18", args.images)
        protect_s = timed(["protect", "-i", str(original), "-o", str(tmp / "protected")])
        audit_s = timed(["audit", "-i", str(original), "-p", str(tmp / "protected"), "-o", str(tmp / "audit"),
                         "--level", "quick"])
        audit = json.loads((tmp / "audit" / "audit.json").read_text())
    result = {
        "benchmark": "audit_time",
        "command": "python benchmarks/audit_time.py" + ("" if args.images == 300 else f" --images {args.images}"),
        "data": f"first {args.images} HC18 images of index.csv (native-size PNGs, about 400 x 270) with masks, "
                "no split file (the audit's subject hash splits them)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "protect_s": protect_s,
        "audit_s": audit_s,
        "audit": audit,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"protect {protect_s} s, quick audit {audit_s} s -> {out}")


if __name__ == "__main__":
    main()
