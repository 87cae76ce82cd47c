"""Digest of what ulmed writes, to show that a refactoring left behaviour unchanged.

Runs, each in a fresh process, every protection method on ``sample_data/`` (small optimiser
settings for em and salm), an ML-ready release, the UnSeg generator trainer for a few steps
and ``ulmed evaluate --quick`` with two defenses on ``tests/data/hc18``, then prints one sha256
per run over its output files (manifests and reports with timings and versions removed).
Run it before and after a change and compare::

    python benchmarks/behaviour_digest.py --out benchmarks/results/behaviour_digest.json
    python benchmarks/behaviour_digest.py --compare benchmarks/results/behaviour_digest.json

DICOM outputs depend on the key salt, so the runs set ``ULMED_KEY_SALT``. Torch's results depend on its
thread count: make both runs with the same ``OMP_NUM_THREADS`` (the reference: unset, 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "rounds=1", "--set", "train_steps=2", "--set", "pgd_steps=2"]

RUNS: dict[str, list[str]] = {
    "none": ["protect", "-i", "sample_data", "-o", "{out}", "--method", "none"],
    "random": ["protect", "-i", "sample_data", "-o", "{out}", "--method", "random"],
    "lsp": ["protect", "-i", "sample_data", "-o", "{out}"],
    "lsp_native": ["protect", "-i", "sample_data", "-o", "{out}", "--grid", "native"],
    "lsp_l2_random": ["protect", "-i", "sample_data", "-o", "{out}", "--method", "random", "--eps", "l2:2"],
    "em": ["protect", "-i", "sample_data/hc18", "-o", "{out}", "--method", "em", *SMALL],
    "em_volumes": ["protect", "-i", "sample_data/msd_hippocampus", "-o", "{out}", "--method", "em", *SMALL],
    "salm": ["protect", "-i", "sample_data", "-o", "{out}", "--method", "salm", *SMALL],
    "unseg": ["protect", "-i", "sample_data/hc18", "-o", "{out}", "--method", "unseg"],
    "release_size": ["release", "-i", "tests/data/hc18", "-o", "{out}", "--size", "64"],
    "train_generator": [
        "train-generator",
        "--data",
        "tests/data/hc18/images",
        "--masks",
        "tests/data/hc18/masks",
        "--out",
        "{out}/gen.pt",
        "--rounds",
        "1",
        "--limit",
        "4",
        "--threads",
        "1",
    ],
    "evaluate": [
        "evaluate",
        "--clean",
        "tests/data/hc18",
        "--protected",
        "lsp={lsp_hc18}",
        "-o",
        "{out}",
        "--quick",
        "--defense",
        "none",
        "--defense",
        "augmentation",
        "--threads",
        "1",
    ],
}

# Keys whose values are timings, versions or paths, not behaviour.
VOLATILE = {
    "created",
    "finished",
    "started",
    "wall_s",
    "seconds",
    "elapsed_s",
    "versions",
    "version",
    "ulmed_version",
    "wall_seconds",
    "clean",
    "out",
    "path",
    "time",
    "duration_s",
    "host",
    "command",
    "argv",
    "train_s",
    "wall",
}


def _clean(value: object) -> object:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return value.replace(str(ROOT), "<repo>")  # e.g. the UnSeg checkpoint's absolute path
    return value


def _hash_tree(value: object, h: hashlib._Hash, key: str = "") -> None:
    """Hash a checkpoint's nested dicts, lists and tensors by value (timings left out)."""
    if isinstance(value, dict):
        for k in sorted(value, key=str):
            if str(k) not in VOLATILE and not str(k).endswith("_s"):
                _hash_tree(value[k], h, f"{key}/{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _hash_tree(v, h, f"{key}/{i}")
    elif hasattr(value, "numpy"):
        h.update(key.encode() + value.detach().cpu().numpy().tobytes())
    else:
        h.update(key.encode() + repr(value).encode())


def digest_folder(folder: Path) -> dict[str, str]:
    """sha256 per output file; JSON files are hashed without volatile keys; .ulmed/ and logs skipped."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel.startswith(".ulmed") or rel.endswith((".md", ".log", "SHA256SUMS")):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_clean(json.loads(data)), sort_keys=True).encode()
        if path.suffix == ".pt":
            import torch

            h = hashlib.sha256()
            _hash_tree(torch.load(path, weights_only=True, map_location="cpu"), h)
            out[rel] = h.hexdigest()
            continue
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def run_all(names: list[str]) -> dict[str, dict]:
    env = dict(os.environ, ULMED_KEY_SALT="behaviour-digest-salt-0123456789", PYTHONHASHSEED="0")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        lsp_hc18 = Path(tmp) / "lsp_hc18"
        subprocess.run(
            [sys.executable, "-m", "ulmed", "protect", "-i", "tests/data/hc18", "-o", str(lsp_hc18), "-q"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        for name in names:
            out = Path(tmp) / name
            args = [a.format(out=out, lsp_hc18=lsp_hc18) for a in RUNS[name]]
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "ulmed", *args], cwd=ROOT, env=env, capture_output=True, text=True
            )
            files = digest_folder(out) if out.exists() else {}
            total = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
            results[name] = {
                "rc": proc.returncode,
                "sha256": total,
                "files": files,
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            print(
                f"{name:16s} rc={proc.returncode} {total[:16]} {len(files)} files {results[name]['wall_s']} s",
                flush=True,
            )
            if proc.returncode not in (0, 3):
                print(proc.stderr[-2000:], file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, help="compare against an earlier --out")
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to make (default all)")
    args = parser.parse_args()
    results = run_all(args.only or list(RUNS))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = []
        for name, now in results.items():
            then = before.get(name)
            if then is None or then["sha256"] != now["sha256"] or then["rc"] != now["rc"]:
                changed = sorted(
                    k
                    for k in set(now["files"]) | set((then or {}).get("files", {}))
                    if now["files"].get(k) != (then or {}).get("files", {}).get(k)
                )
                differ.append(name)
                print(f"DIFFERS {name}: {changed[:10]}")
        print("same behaviour" if not differ else f"{len(differ)} runs differ: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
