"""Pipeline at scale: engine throughput, peak memory against data size, resume after SIGKILL.

Every measurement runs the real command (``ulmed protect``) in a fresh process:

1. throughput: methods ``random`` (cheapest) and the default (``lsp``) with the local engine
   at 1 and 2 workers and Ray at 2 workers, on HC18 PNG images with masks, MSD hippocampus
   NIfTI volumes with label maps and a DICOM export (the io_throughput bundle: a 4-slice CT
   series, CT_small, MR_small, multi-frame emri_small and a 512x512 CT, copied under new
   UIDs); each output tree is compared byte for byte with the 1-worker local run. The
   journal is watched while the run goes, which splits the wall time into startup (until
   the first unit is committed), the records and the copies (masks, label maps);
2. memory: DICOM exports of 1x, 10x and 100x copies of that bundle, each protected
   (method random, one local worker) in a fresh process; its peak RSS (wait4, from a small launcher);
3. resume: ``ulmed protect --method lsp`` on HC18 images with masks, killed with SIGKILL five
   times in a row at seeded random points of its work (each resume is killed again, the last
   one finishes), compared with an uninterrupted run; the same for ``em`` fitted in chunks
   (killed between chunks, inside a chunk's writes and inside a chunk's fit).

Usage:
    python benchmarks/pipeline_scale.py --quick    # about 4 minutes on 2 CPU cores
    python benchmarks/pipeline_scale.py            # full: about 9 minutes

Writes benchmarks/results/pipeline_scale[_quick].json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The same real DICOM bundle as io_throughput.py, each copy under new UIDs.
from io_throughput import _dicom_export

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ULMED = Path(sys.executable).parent / "ulmed"
CONFIGS = (("local", 1), ("local", 2), ("ray", 2))
EM_ARGS = ["--method", "em", "--chunk-size", "8", "--set", "rounds=1", "--set", "train_steps=2", "--set", "pgd_steps=2"]
TEMP = re.compile(r"^\..+\.part")
RESUMING = re.compile(r"resuming: (\d+) unit\(s\) already done")  # the CLI's -v log lines
REMOVED = re.compile(r"removed (\d+) temporary file\(s\)")

MODES = {
    "quick": {
        "images": 40,
        "nifti": 40,
        "dicom": 10,
        "methods": ("random", "lsp"),
        "memory": (1, 10, 30),
        "resume_images": 60,
        "em_images": 24,
    },
    "full": {
        "images": 712,
        "nifti": 189,
        "dicom": 100,
        "methods": ("random", "lsp"),
        "memory": (1, 10, 100),
        "resume_images": 240,
        "em_images": 24,
    },
}


# ----------------------------------------------------------------------------------------- data
def _dataset(kind: str, n: int, dst: Path) -> Path:
    """The first ``n`` HC18 images with masks, or hippocampus volumes with label maps (symlinks)."""
    src, targets = (DATA / "hc18", "masks") if kind == "images" else (DATA / "msd_hippocampus", "labels")
    for sub in ("images", targets):
        (dst / sub).mkdir(parents=True)
    for f in sorted((src / "images").iterdir())[:n]:
        (dst / "images" / f.name).symlink_to(f)
        (dst / targets / f.name).symlink_to(src / targets / f.name)
    return dst


def tree_hashes(out: Path) -> dict[str, str]:
    """sha256 of every output file except manifest*.json and the .ulmed/ control folder."""
    hashes = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not path.is_file() or rel.parts[0] == ".ulmed" or (len(rel.parts) == 1 and rel.name.startswith("manifest")):
            continue
        hashes[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def compare(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return {"identical": not differ, "files": len(b), "differing": len(differ), "first_differing": differ[:5]}


def temporaries(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*") if p.is_file() and TEMP.match(p.name))


# ----------------------------------------------------------------------------------------- runs
@dataclass
class Watch:
    """What the journal said while a run went: (seconds, records, copies, chunks) at each change."""

    path: Path
    offset: int = 0
    buffer: bytes = b""
    records: int = 0
    copies: int = 0
    chunks: int = 0
    events: list[tuple[float, int, int, int]] = field(default_factory=list)

    def poll(self, t: float) -> None:
        try:
            if self.path.stat().st_size < self.offset:  # a resume cut a torn last line: read it again
                self.offset, self.buffer, self.records, self.copies, self.chunks = 0, b"", 0, 0, 0
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self.offset += len(data)
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            if line.startswith(b'{"unit": "copy:'):
                self.copies += 1
            elif line.startswith(b'{"unit"'):
                self.records += 1
            elif line.startswith(b'{"chunk"'):
                self.chunks += 1
        self.events.append((t, self.records, self.copies, self.chunks))

    def first(self, what: int, at_least: int = 1) -> float | None:
        return next((e[0] for e in self.events if e[what] >= at_least), None)

    def last_change(self, what: int) -> float | None:
        times = [e[0] for i, e in enumerate(self.events) if e[what] != (self.events[i - 1][what] if i else 0)]
        return times[-1] if times else None


#: Runs a command in a child forked from this small process and writes the child's peak RSS
#: (wait4; KB) to a file. Measuring from the benchmark itself would be wrong: subprocess
#: starts children with vfork, and Linux counts the parent's resident set in the child's peak.
_LAUNCH = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(cmd: list[str], log: Path) -> tuple[float, int]:
    """Peak RSS (MB) and exit code of ``cmd`` run in a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss, open(log, "ab") as err:
        rc = subprocess.call([sys.executable, "-S", "-c", _LAUNCH, rss.name, *cmd], stdout=err, stderr=err)
        return int(Path(rss.name).read_text() or 0) / 1024, rc


def run_cli(
    args: list[str], out: Path, log: Path, kill: Callable[[Watch, float], bool] | None = None, verbose: bool = False
) -> dict[str, Any]:
    """Run ``ulmed protect ARGS -o OUT`` in a fresh process; watch its journal; maybe SIGKILL it.

    Returns:
        Wall seconds, exit code, peak RSS (MB; the largest process of the run's tree, from
        wait4; not measured for runs that may be killed), whether it was killed, the journal watch.
    """
    cmd = [str(ULMED), *(["-v"] if verbose else []), "protect", *args, "-o", str(out)]
    watch = Watch(out / ".ulmed" / "journal.jsonl")
    killed = False
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss, open(log, "ab") as err:
        launch = [] if kill else [sys.executable, "-S", "-c", _LAUNCH, rss.name]
        start = time.perf_counter()
        proc = subprocess.Popen([*launch, *cmd], stdout=err, stderr=err)
        while (rc := proc.poll()) is None:
            t = time.perf_counter() - start
            watch.poll(t)
            if kill is not None and not killed and kill(watch, t):
                os.kill(proc.pid, signal.SIGKILL)  # no launcher in between: this is ulmed itself
                killed = True
            time.sleep(0.02)
        t = time.perf_counter() - start
        watch.poll(t)
        peak = None if kill else int(Path(rss.name).read_text() or 0) / 1024
    return {
        "wall_s": t,
        "rc": rc,
        "peak_rss_MB": peak,
        "killed": killed,
        "watch": watch,
        "command": " ".join(["ulmed", *cmd[1:]]),
    }


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


# ----------------------------------------------------------------------------------- throughput
def throughput(sources: dict[str, Path], methods: tuple[str, ...], work: Path, log: Path) -> list[dict[str, Any]]:
    rows = []
    for kind, src in sources.items():
        for method in methods:
            reference: dict[str, str] | None = None
            for engine, workers in CONFIGS:
                out = work / f"tp_{kind}_{method}_{engine}{workers}"
                r = run_cli(
                    ["-i", str(src), "--method", method, "--engine", engine, "--workers", str(workers)], out, log
                )
                if r["rc"] != 0:
                    raise SystemExit(f"run failed (rc {r['rc']}): {r['command']}; see {log}")
                m, w = _manifest(out), r["watch"]
                hashes = tree_hashes(out)
                reference = reference or hashes
                units = m["run"]["units"]
                first, last = w.first(1), w.last_change(1)
                first_copy, last_copy = w.first(2), w.last_change(2)
                steady = (units - 1) / (last - first) if units > 1 and last and first and last > first else None
                rows.append(
                    {
                        "data": kind,
                        "method": method,
                        "engine": engine,
                        "workers": workers,
                        "units": units,
                        "copies": m["run"]["copies"],
                        "wall_s": round(r["wall_s"], 2),
                        "loop_s": m["run"]["seconds"],
                        "startup_s": round(first, 2) if first else None,  # launch to first committed record
                        "records_s": round(last - first, 2) if first and last else None,
                        "copy_gap_s": round(first_copy - last, 2)
                        if first_copy and last
                        else None,  # last record to first copy
                        "copies_s": round(last_copy - first_copy, 2) if first_copy and last_copy else None,
                        "units_per_s": round(units / r["wall_s"], 2),
                        "steady_units_per_s": round(steady, 2) if steady else None,
                        "images_per_s": round(units / r["wall_s"], 2) if kind == "images" else None,
                        "series_per_min": round(60 * units / r["wall_s"], 1) if kind == "dicom" else None,
                        "peak_rss_MB": round(r["peak_rss_MB"], 1),
                        "identical_to_local1": compare(reference, hashes)["identical"],
                        "command": r["command"],
                    }
                )
                print(_tp_line(rows[-1]), flush=True)
                shutil.rmtree(out)
    for r in rows:
        base = next(
            b
            for b in rows
            if (b["data"], b["method"], b["engine"], b["workers"]) == (r["data"], r["method"], "local", 1)
        )
        r["speedup_vs_local1"] = round(base["wall_s"] / r["wall_s"], 2)
    return rows


def throughput_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Where the time of the parallel engines goes, from the journal timelines."""
    notes = []
    for engine, workers in CONFIGS[1:]:
        mine = [r for r in rows if (r["engine"], r["workers"]) == (engine, workers)]
        base = {(r["data"], r["method"]): r for r in rows if (r["engine"], r["workers"]) == ("local", 1)}
        extra = [r["startup_s"] - base[(r["data"], r["method"])]["startup_s"] for r in mine if r["startup_s"]]
        gaps = [r["copy_gap_s"] for r in mine if r["copy_gap_s"] is not None]
        steady = [
            r["steady_units_per_s"] / base[(r["data"], r["method"])]["steady_units_per_s"]
            for r in mine
            if r["steady_units_per_s"] and base[(r["data"], r["method"])]["steady_units_per_s"]
        ]
        if extra:
            notes.append(
                f"{engine} x{workers}: the first committed unit comes {min(extra):.1f}-{max(extra):.1f} s later "
                f"than with one local "
                f"worker (worker or Ray start); the copies (masks, label maps) start {min(gaps, default=0):.1f}-"
                f"{max(gaps, default=0):.1f} s after the last record; rate between first and last committed record "
                f"{min(steady, default=0):.2f}-{max(steady, default=0):.2f}x the one-worker rate (coarse on "
                f"small sets: results come in batches)."
            )
    return notes


def _tp_line(r: dict[str, Any]) -> str:
    rate = (
        f"{r['images_per_s']:.1f} img/s"
        if r["images_per_s"]
        else f"{r['series_per_min']:.0f} series/min"
        if r["series_per_min"]
        else ""
    )
    cg = f"{r['copy_gap_s']:.1f}" if r["copy_gap_s"] is not None else "-"
    return (
        f"{r['data']:6s} {r['method']:6s} {r['engine']:5s} {r['workers']:2d} {r['units']:6d} {r['wall_s']:7.1f} "
        f"{r['startup_s'] or 0:7.1f} {cg:>7s} {r['units_per_s']:7.2f} {r['steady_units_per_s'] or 0:8.1f} "
        f"{rate:>16s} {r['peak_rss_MB']:8.0f} {'yes' if r['identical_to_local1'] else 'NO':>9s}"
    )


# --------------------------------------------------------------------------------------- memory
def import_floor(log: Path) -> float:
    """Peak RSS (MB) of a process that imports what ``ulmed protect --method random`` imports and builds the method."""
    code = (
        "import ulmed.cli, ulmed.io.discover, ulmed.pipeline.work, ulmed.pipeline.protect as p; "
        "p.build_method('random', '8/255', 0, 'cpu')"
    )
    peak, rc = peak_rss_of([sys.executable, "-c", code], log)
    if rc != 0:
        raise SystemExit(f"import floor probe failed; see {log}")
    return peak


def trace_memory(src: Path, out: Path, log: Path) -> dict[str, Any]:
    """tracemalloc peak and the largest live allocation sites of an in-process run (only on a miss)."""
    code = f"""
import json, tracemalloc
tracemalloc.start(8)
from ulmed.pipeline.protect import protect_path
protect_path({str(src)!r}, {str(out)!r}, method="random")
snap = tracemalloc.take_snapshot()
top = [{{"where": str(s.traceback[0]), "MB": round(s.size / 1e6, 2)}} for s in snap.statistics("lineno")[:12]]
print(json.dumps({{"traced_peak_MB": round(tracemalloc.get_traced_memory()[1] / 1e6, 1), "live_top": top}}))
"""
    with open(log, "ab") as err:
        res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, check=True)
    shutil.rmtree(out)
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def memory(exports: dict[int, Path], work: Path, log: Path) -> dict[str, Any]:
    floor = import_floor(log)
    rows = []
    for copies, src in sorted(exports.items()):
        out = work / f"mem_{copies}x"
        r = run_cli(["-i", str(src), "--method", "random"], out, log)
        m = _manifest(out)
        rows.append(
            {
                "copies": copies,
                "series": m["run"]["units"],
                "files": sum(1 for p in src.rglob("*") if p.is_file()),
                "wall_s": round(r["wall_s"], 2),
                "peak_rss_MB": round(r["peak_rss_MB"], 1),
                "above_import_MB": round(r["peak_rss_MB"] - floor, 1),
                "command": r["command"],
            }
        )
        print(
            f"memory {copies:4d}x {rows[-1]['series']:5d} series {rows[-1]['wall_s']:7.1f} s  peak "
            f"{rows[-1]['peak_rss_MB']:7.1f} MB",
            flush=True,
        )
        shutil.rmtree(out)
    base, top = rows[0], rows[-1]
    ratios = {f"{r['copies']}x/1x": round(r["peak_rss_MB"] / base["peak_rss_MB"], 3) for r in rows[1:]}
    grow = top["peak_rss_MB"] - base["peak_rss_MB"]
    result = {
        "import_floor_MB": round(floor, 1),
        "rows": rows,
        "ratios": ratios,
        "target": "peak RSS ratio <= 1.2",
        "met": all(v <= 1.2 for v in ratios.values()),
        "growth_MB": round(grow, 1),
        "growth_KB_per_series": round(1024 * grow / max(top["series"] - base["series"], 1), 1),
    }
    if not result["met"]:
        mid = sorted(exports)[-2]
        result["investigation"] = {
            f"{c}x": trace_memory(exports[c], work / f"trace_{c}x", log) for c in (mid, max(exports))
        }
    return result


# --------------------------------------------------------------------------------------- resume
def _attempt_info(r: dict[str, Any], out: Path, log_text: str) -> dict[str, Any]:
    found, removed = RESUMING.findall(log_text), REMOVED.findall(log_text)
    return {
        "killed": r["killed"],
        "rc": r["rc"],
        "wall_s": round(r["wall_s"], 2),
        "journal_records": r["watch"].records,
        "journal_copies": r["watch"].copies,
        "journal_chunks": r["watch"].chunks,
        "resume_found_done": int(found[-1]) if found else 0,
        "stale_temporaries_removed": int(removed[-1]) if removed else 0,
        "temporaries_after": temporaries(out),
    }


def fresh(cond: Callable[[Watch, float], bool]) -> Callable[[Watch, float], bool]:
    """A kill condition that only fires on progress of this attempt (never when already true at its start)."""
    armed: dict[str, bool] = {}

    def kill(watch: Watch, t: float) -> bool:
        if "on" not in armed:
            armed["on"] = not cond(watch, t)
            return False
        return armed["on"] and cond(watch, t)

    return kill


def _kill_loop(
    args: list[str], out: Path, log: Path, kills: list[Callable[[Watch, float], bool] | None], first: int = 1
) -> list[dict[str, Any]]:
    """Run, kill, resume ... one attempt per entry of ``kills`` (None: let it finish)."""
    attempts = []
    for kill in kills:
        print(f"  attempt {first + len(attempts)}:", end="", flush=True)
        mark = log.stat().st_size if log.exists() else 0
        r = run_cli(args, out, log, kill=fresh(kill) if kill else None, verbose=True)
        with open(log, "rb") as fh:
            fh.seek(mark)
            text = fh.read().decode(errors="replace")
        attempts.append(_attempt_info(r, out, text))
        a = attempts[-1]
        print(
            f" {'killed' if a['killed'] else 'finished'} at {a['wall_s']:.1f} s; found done {a['resume_found_done']}, "
            f"removed {a['stale_temporaries_removed']} temporaries; journal now {a['journal_records']} records + "
            f"{a['journal_copies']} copies + {a['journal_chunks']} chunks; temporaries left: {a['temporaries_after']}",
            flush=True,
        )
        if kill is None and r["rc"] != 0:
            raise SystemExit(f"resume failed (rc {r['rc']}): {r['command']}; see {log}")
    return attempts


def resume_lsp(src: Path, n: int, work: Path, log: Path, rng: random.Random) -> dict[str, Any]:
    args = ["-i", str(src), "--method", "lsp"]
    ref = run_cli(args, work / "resume_ref", log)
    w = ref["watch"]
    per_record = (w.last_change(1) - w.first(1)) / max(n - 1, 1)
    done = {"records": 0, "copies": 0}

    def killer() -> Callable[[Watch, float], bool]:
        """Kill once a seeded 20-80 % of the records left are committed, then a random part of one record later.

        The mask copies take about a millisecond each, so the kills aim at the records (the
        work); when fewer than two records are left they aim at the copies.
        """
        frac, delay = rng.uniform(0.2, 0.8), rng.uniform(0, per_record)
        left = n - done["records"]
        if left >= 2:
            what, target = "records", done["records"] + min(left - 1, max(1, round(frac * left)))
        else:
            what, target = "copies", done["copies"] + max(1, round(frac * (n - done["copies"])))
        hit: dict[str, float] = {}

        def kill(watch: Watch, t: float) -> bool:
            if "t" not in hit and getattr(watch, what) >= target:
                hit["t"] = t
            return "t" in hit and t >= hit["t"] + delay

        return kill

    out = work / "resume_lsp"
    attempts = []
    for i in range(6):  # five kills, then the last resume finishes
        attempts += _kill_loop(args, out, log, [killer() if i < 5 else None], first=i + 1)
        done.update(records=attempts[-1]["journal_records"], copies=attempts[-1]["journal_copies"])
    cmp = compare(tree_hashes(work / "resume_ref"), tree_hashes(out))
    ref_entries, res_entries = (_manifest(p)["entries"] for p in (work / "resume_ref", out))
    result = {
        "command": ref["command"],
        "units": n,
        "copies": n,
        "uninterrupted_wall_s": round(ref["wall_s"], 2),
        "kill_rule": "a seeded 20-80 % of the records left are committed, then a seeded part of one record's time",
        "kills": sum(a["killed"] for a in attempts),
        "attempts": attempts,
        **cmp,
        "manifest_entries_equal": ref_entries == res_entries,
        "temporaries_left": temporaries(out),
        "control_files": sorted(p.name for p in (out / ".ulmed").iterdir()),
    }
    shutil.rmtree(out)
    shutil.rmtree(work / "resume_ref")
    return result


def resume_em(src: Path, n: int, work: Path, log: Path, rng: random.Random) -> dict[str, Any]:
    args = ["-i", str(src), *EM_ARGS]
    ref = run_cli(args, work / "em_ref", log)
    w = ref["watch"]
    chunk_ends = [w.first(3, k) for k in range(1, w.chunks + 1)]
    fit_s = (chunk_ends[1] - chunk_ends[0]) if len(chunk_ends) > 1 else ref["wall_s"] / 3

    def after_chunk(k: int) -> Callable[[Watch, float], bool]:  # right after chunk k is journaled
        return lambda watch, t: watch.chunks >= k

    def inside_writes(records: int) -> Callable[[Watch, float], bool]:  # after some units of a chunk, before its end
        return lambda watch, t: watch.records >= records

    def inside_fit() -> Callable[[Watch, float], bool]:  # a seeded 20-80 % into the fit of the chunk being resumed
        frac = rng.uniform(0.2, 0.8)
        when: dict[str, float] = {}

        def kill(watch: Watch, t: float) -> bool:
            if "mark" not in when:
                when["mark"] = log.stat().st_size
            if "start" not in when:
                with open(log, "rb") as fh:
                    fh.seek(int(when["mark"]))
                    if RESUMING.search(fh.read().decode(errors="replace")):
                        when["start"] = t  # the resume has read its journal; the chunk's fit comes next
            return "start" in when and t >= when["start"] + frac * fit_s

        return kill

    out = work / "resume_em"
    kills = [after_chunk(1), inside_writes(8 + 3), inside_fit(), after_chunk(2), None]
    attempts = _kill_loop(args, out, log, kills)
    cmp = compare(tree_hashes(work / "em_ref"), tree_hashes(out))
    result = {
        "command": ref["command"],
        "units": n,
        "chunks": len(chunk_ends),
        "uninterrupted_wall_s": round(ref["wall_s"], 2),
        "kill_points": [
            "as soon as chunk 0 was journaled (between chunks)",
            "after 3 records of chunk 1 (inside its writes)",
            "a seeded 20-80 % of one chunk's fit time after the resume read its journal (inside the refit of chunk 1)",
            "as soon as chunk 1 was journaled (between chunks)",
            "none: runs to completion",
        ],
        "attempts": attempts,
        "kills": sum(a["killed"] for a in attempts),
        **cmp,
        "manifest_entries_equal": _manifest(work / "em_ref")["entries"] == _manifest(out)["entries"],
        "temporaries_left": temporaries(out),
        "control_files": sorted(p.name for p in (out / ".ulmed").iterdir()),
    }
    if not cmp["identical"]:  # nondeterminism or a resume bug? a second uninterrupted run tells them apart
        run_cli(args, work / "em_ref2", log)
        result["uninterrupted_runs_identical"] = compare(tree_hashes(work / "em_ref"), tree_hashes(work / "em_ref2"))[
            "identical"
        ]
    return result


# ----------------------------------------------------------------------------------------- main
def _machine() -> dict[str, Any]:
    """Machine and versions, without importing torch or Ray here (this process must stay small)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []
    mem = next((int(line.split()[1]) // 1024 for line in meminfo if line.startswith("MemTotal")), None)
    return {
        "cpus": os.cpu_count(),
        "memory_MB": mem,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: ver(name) for name in ("torch", "ray", "pydicom", "numpy", "ulmed")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sets (40 images, 40 volumes, 50 series; memory up to 30x)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    cfg = MODES[mode]
    rng = random.Random(args.seed)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "pipeline_scale",
        "mode": mode,
        "command": f"python benchmarks/pipeline_scale.py{' --quick' if args.quick else ''} --seed {args.seed}",
        "machine": _machine(),
        "config": dict(cfg),
        "notes": [],
    }
    with tempfile.TemporaryDirectory(prefix="ulmed_scale_") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "runs.log"
        exports = {c: _dicom_export(tmp / f"dicom_{c}x", copies=c) for c in cfg["memory"]}
        sources = {"images": _dataset("images", cfg["images"], tmp / "hc18")}
        if cfg["nifti"]:
            sources["nifti"] = _dataset("nifti", cfg["nifti"], tmp / "hippocampus")
        if cfg["dicom"]:
            sources["dicom"] = exports[cfg["dicom"]]
        print(
            f"{'data':6s} {'method':6s} {'eng':5s} {'w':>2s} {'units':>6s} {'wall s':>7s} {'start s':>7s} "
            f"{'gap s':>7s} "
            f"{'unit/s':>7s} {'steady/s':>8s} {'rate':>16s} {'peak MB':>8s} {'identical':>9s}"
        )
        results["throughput"] = throughput(sources, cfg["methods"], tmp, log)
        results["notes"] += throughput_notes(results["throughput"])
        results["notes"].append(
            "peak_rss_MB is wait4's ru_maxrss of a child forked from a small launcher: the largest single "
            "process of the run's tree (local workers included), not their sum; Ray's daemons are not children "
            "and are not counted."
        )
        results["memory"] = memory(exports, tmp, log)
        print("resume lsp (SIGKILL x5):", flush=True)
        results["resume_lsp"] = resume_lsp(
            _dataset("images", cfg["resume_images"], tmp / "resume_src"), cfg["resume_images"], tmp, log, rng
        )
        print("resume em in chunks of 8 (SIGKILL x4):", flush=True)
        results["resume_em"] = resume_em(
            _dataset("images", cfg["em_images"], tmp / "em_src"), cfg["em_images"], tmp, log, rng
        )
        results["log_tail"] = log.read_text(errors="replace").splitlines()[-20:]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out = REPO / "benchmarks/results" / f"pipeline_scale{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _summary(results)
    print(f"wrote {out} ({results['wall_s']:.0f} s)")


def _summary(res: dict[str, Any]) -> None:
    mem = res["memory"]
    print(
        "\nmemory (DICOM, random, 1 local worker): "
        + ", ".join(f"{r['copies']}x {r['series']} series {r['peak_rss_MB']:.0f} MB" for r in mem["rows"])
        + f"; ratios {mem['ratios']}; import floor {mem['import_floor_MB']:.0f} MB; "
        f"{mem['growth_KB_per_series']} KB/series; target <= 1.2: {'met' if mem['met'] else 'MISSED'}"
    )
    for name in ("resume_lsp", "resume_em"):
        r = res[name]
        print(
            f"{name}: {r['kills']} kills, found done per attempt {[a['resume_found_done'] for a in r['attempts']]}, "
            f"byte-identical: {'yes' if r['identical'] else 'NO'} ({r['files']} files), manifest entries equal: "
            f"{r['manifest_entries_equal']}, temporaries left: {len(r['temporaries_left'])}"
        )


if __name__ == "__main__":
    main()
