"""nnU-Net v2 as a victim: :func:`run_nnunet` plans, trains and predicts as a user would, then scores.

One run, in ``workdir/nnunet-<key>/``:

1. the raw data set (:func:`~ulmed.eval.nnunet.raw.write_raw_dataset`) under ``nnUNet_raw``;
2. ``python -m ulmed.eval.nnunet.worker spec.json`` in a fresh process with ``nnUNet_raw``,
   ``nnUNet_preprocessed`` and ``nnUNet_results`` set to the run's folders (nnU-Net reads them
   from the environment), its output in ``worker.log`` (also forwarded to the ``ulmed`` logger);
3. Dice of the test predictions (:func:`~ulmed.eval.nnunet.score.score_predictions`);
4. ``result.json`` (written last, atomically).

Reuse: ``<key>`` is a hash of the bytes of every input file (in order), the spatial dims, the
schedule (less ``threads``), the nnunetv2 version and :data:`FORMAT`. A run folder whose
``result.json`` carries the same key is returned without training (``reused: true``); an
unfinished one is removed and run again. Only ``checkpoint_final.pth`` is kept of the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulmed.errors import ConfigError, InputError, MissingDependencyError, UlmedError, os_reason
from ulmed.eval.nnunet.raw import Case, RawDataset, check_cases, write_raw_dataset
from ulmed.eval.nnunet.schedule import NNUNET_DEFAULT, Device, NnunetSchedule
from ulmed.eval.nnunet.score import score_predictions
from ulmed.eval.nnunet.worker import INSTALL_HINT, MISSING_EXIT, PREFIX
from ulmed.io.atomic import atomic_write_json

log = logging.getLogger("ulmed")

#: Victim names of the evaluation grid -> spatial dims of the data they take.
NNUNET_VICTIMS: dict[str, int] = {"nnunet-2d": 2, "nnunet-3d": 3}
#: The nnU-Net configuration trained for each spatial dimensionality.
CONFIGURATIONS: dict[int, str] = {2: "2d", 3: "3d_fullres"}
#: Version of this procedure and result layout; part of the reuse key.
FORMAT = 1
RESULT_NAME = "result.json"
LOG_NAME = "worker.log"
TAIL_LINES = 40


class NnunetFailed(UlmedError):
    """The nnU-Net worker process failed; the message holds the end of its log."""


def nnunet_version() -> str | None:
    """The installed nnunetv2's version (read from its metadata, not imported), or None."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        return version("nnunetv2") if find_spec("nnunetv2") is not None else None
    except PackageNotFoundError:
        return "unknown"


def require_nnunet() -> str:
    """nnunetv2's version, or MissingDependencyError with the install command."""
    found = nnunet_version()
    if found is None:
        raise MissingDependencyError(INSTALL_HINT)
    return found


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read this input ({os_reason(exc)}); check the path", path) from exc
    return h.hexdigest()


def run_key(train: Sequence[Case], test: Sequence[Case], spatial_dims: int, schedule: NnunetSchedule) -> str:
    """The reuse key of a run: input bytes, dims, schedule, nnunetv2 version, :data:`FORMAT`."""
    files = {split: [[_file_digest(p) for p in case] for case in cases]
             for split, cases in (("train", train), ("test", test))}
    what = {"format": FORMAT, "nnunetv2": nnunet_version(), "spatial_dims": spatial_dims,
            "schedule": schedule.key_dict(), "files": files}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def finished_result(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The result in ``run_dir`` when it is finished and has ``key``, else None."""
    try:
        result = json.loads((run_dir / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("key") == key else None


def worker_env(run_dir: Path, schedule: NnunetSchedule) -> dict[str, str]:
    """The worker's environment: nnU-Net's three folders, its process counts, threads, our package path."""
    import ulmed

    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(run_dir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(run_dir / "nnUNet_preprocessed"),
        "nnUNet_results": str(run_dir / "nnUNet_results"),
        "nnUNet_n_proc_DA": str(schedule.resolved_workers()),
        # nnU-Net's predictor caps its torch threads at this (our pools get their size from the spec)
        "nnUNet_def_n_proc": str(schedule.threads or os.cpu_count() or 1),
        "PYTHONUNBUFFERED": "1",
    })
    package_root = str(Path(ulmed.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    if schedule.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(schedule.threads)
    return env


def _processes(schedule: NnunetSchedule) -> int:
    """Processes of nnU-Net's fingerprint and preprocessing pools: 1, or 2 with augmentation workers."""
    return 1 if schedule.resolved_workers() == 0 else 2


def run_worker(spec: dict[str, Any], run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the worker on ``spec``; its output JSON. Its log goes to ``worker.log`` and the logger.

    Raises:
        MissingDependencyError: nnunetv2 cannot be imported in the worker.
        NnunetFailed: The worker exited with an error (the message ends with its log's last lines).
    """
    spec_path = run_dir / "spec.json"
    atomic_write_json(spec_path, spec)
    cmd = [sys.executable, "-m", "ulmed.eval.nnunet.worker", str(spec_path)]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with open(run_dir / LOG_NAME, "w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=run_dir, errors="replace")
        try:
            for line in proc.stdout or ():
                log_fh.write(line)
                tail.append(line.rstrip())
                log.log(logging.INFO if line.startswith(PREFIX) else logging.DEBUG, "nnU-Net: %s", line.rstrip())
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code == MISSING_EXIT:
        raise MissingDependencyError(f"{INSTALL_HINT} (in {sys.executable})")
    if code != 0:
        lines = "\n".join(tail)
        raise NnunetFailed(f"the nnU-Net worker failed (exit status {code}); the end of its log:\n{lines}",
                           run_dir / LOG_NAME)
    return json.loads(Path(spec["output"]).read_text())


def _spec(raw: RawDataset, run_dir: Path, schedule: NnunetSchedule) -> dict[str, Any]:
    return {"dataset_id": raw.dataset_id, "configuration": CONFIGURATIONS[raw.spatial_dims],
            "schedule": schedule.to_dict(), "workers": schedule.resolved_workers(),
            "processes": _processes(schedule), "test_images": [str(p) for p in raw.test_images],
            "predictions": str(run_dir / "predictions"), "output": str(run_dir / "worker.json")}


def _prune(worker: dict[str, Any]) -> None:
    """Drop nnU-Net's best-EMA checkpoint (we predict with the final one)."""
    best = Path(worker.get("output_folder", "")) / "checkpoint_best.pth"
    if best.is_file():
        best.unlink()


def _check_run(train: list[Case], test: list[Case], spatial_dims: int, schedule: NnunetSchedule) -> None:
    if spatial_dims not in CONFIGURATIONS:
        raise ConfigError(f"spatial_dims must be 2 (nnU-Net 2d) or 3 (3d_fullres), got {spatial_dims!r}")
    if not isinstance(schedule, NnunetSchedule):
        raise ConfigError(f"schedule must be an NnunetSchedule, got {type(schedule).__name__}")
    if not train or not test:
        raise ConfigError(f"nnU-Net needs train and test cases; got {len(train)} train and {len(test)} test")
    if schedule.device == Device.CUDA and schedule.workers == 0:
        log.warning("nnU-Net on CUDA with workers=0: augmentation runs in the training process and starves the GPU")


def _result(raw: RawDataset, worker: dict[str, Any], metrics: dict[str, Any], schedule: NnunetSchedule, *,
            key: str, version: str, run_dir: Path) -> dict[str, Any]:
    """The JSON result of a finished run (``wall_s`` is added by the caller)."""
    return {
        "victim": next(v for v, d in NNUNET_VICTIMS.items() if d == raw.spatial_dims), "key": key,
        "metrics": metrics, "plans": worker["plans"], "schedule": schedule.to_dict(),
        "nnunet_default_schedule": NNUNET_DEFAULT, "labels": raw.labels,
        "label_values": {str(v): k for v, k in raw.label_values.items()},
        "train_losses": worker["train_losses"], "pseudo_dice": worker["pseudo_dice"],
        "nnunetv2": version, "device": worker["device"],
        "plan_s": worker["plan_s"], "train_s": worker["train_s"], "test_s": worker["test_s"],
        "n_train": raw.n_train, "n_test": len(raw.test_images), "run_dir": str(run_dir), "reused": False,
    }


def run_nnunet(
    train: Sequence[tuple[Path, Path]],
    test: Sequence[tuple[Path, Path]],
    *,
    spatial_dims: int,
    schedule: NnunetSchedule,
    workdir: str | Path,
) -> dict[str, Any]:
    """Train nnU-Net (``2d`` or ``3d_fullres``) on ``train`` and score its predictions of ``test``.

    Args:
        train: (image, label) paths: 2D images with masks (PNG/TIFF/JPEG/BMP) or NIfTI volumes
            with label maps.
        test: Clean test cases, same kind.
        spatial_dims: 2 (configuration ``2d``) or 3 (``3d_fullres``).
        schedule: Epochs, iterations, device and seed (:class:`NnunetSchedule`).
        workdir: Folder of the runs (``nnunet-<key>/`` each); a finished run with the same key is reused.

    Returns:
        ``metrics`` (``dice``: mean foreground Dice, ``dice_per_class``, ``iou``, ``hd95``),
        ``plans`` (configuration, patch_size, batch_size, spacing, normalization, ...),
        ``schedule``, ``labels``, ``train_losses`` and ``pseudo_dice`` (per epoch: nnU-Net's
        train loss and its EMA pseudo Dice on the training cases), ``train_s``, ``test_s``,
        ``plan_s``, ``wall_s``, ``n_train``, ``n_test``, ``key``, ``run_dir`` and ``reused``.

    Raises:
        ConfigError: Bad dims, schedule or case lists.
        InputError: An input file is missing or unusable.
        MissingDependencyError: nnunetv2 is not installed.
        NnunetFailed: nnU-Net failed (the message holds the end of its log).
    """
    start = time.perf_counter()
    train_cases, test_cases = check_cases(train, "train"), check_cases(test, "test")
    _check_run(train_cases, test_cases, spatial_dims, schedule)
    version = require_nnunet()
    key = run_key(train_cases, test_cases, spatial_dims, schedule)
    run_dir = Path(workdir).expanduser() / f"nnunet-{key[:16]}"
    done = finished_result(run_dir, key)
    if done is not None:
        log.info("nnU-Net: reusing the finished run in %s", run_dir)
        return {**done, "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    raw = write_raw_dataset(train_cases, test_cases, run_dir / "nnUNet_raw", spatial_dims=spatial_dims)
    worker = run_worker(_spec(raw, run_dir, schedule), run_dir, worker_env(run_dir, schedule))
    _prune(worker)
    predictions = [run_dir / "predictions" / p.name for p in raw.test_labels]
    metrics = score_predictions(predictions, raw.test_labels, raw.num_classes)
    result = _result(raw, worker, metrics, schedule, key=key, version=version, run_dir=run_dir)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    atomic_write_json(run_dir / RESULT_NAME, result)
    return result
