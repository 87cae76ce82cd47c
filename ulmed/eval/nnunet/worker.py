"""The nnU-Net process: ``python -m ulmed.eval.nnunet.worker SPEC.json``.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` from the
environment, so :func:`ulmed.eval.nnunet.runner.run_nnunet` starts this module in a fresh
process with those set to folders of its run; the parent never imports nnunetv2. Steps, all
through nnU-Net's own API:

1. plan and preprocess: ``extract_fingerprint_dataset``, ``plan_experiment_dataset``
   (``ExperimentPlanner``, nnU-Net's default plans) and ``preprocess_dataset`` for one
   configuration, with ``processes`` worker processes;
2. train: :func:`~ulmed.eval.nnunet.trainer.short_trainer` on fold ``all``; nnU-Net's own final
   validation is skipped (the test split is scored instead);
3. predict: ``nnUNetPredictor`` set up with ``manual_initialization`` from ``checkpoint_final.pth``
   (nnU-Net cannot find this trainer class by name), then ``predict_from_files_sequential``.

The spec (JSON) holds ``dataset_id``, ``configuration``, ``schedule``
(:meth:`NnunetSchedule.to_dict`), ``workers``, ``processes``, ``test_images``, ``predictions``
(folder) and ``output`` (where this writes plans, timings and training losses as JSON).
Exit status :data:`MISSING_EXIT` means nnunetv2 is not installed.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

#: Exit status when nnunetv2 cannot be imported.
MISSING_EXIT = 3
INSTALL_HINT = 'nnU-Net v2 is not installed; pip install "ulmed[nnunet]" (or pip install nnunetv2)'
#: Lines that start with this are the worker's own progress (the parent logs them at INFO).
PREFIX = "[ulmed-nnunet]"


def say(message: str) -> None:
    """One progress line on stdout (the parent forwards it)."""
    print(f"{PREFIX} {message}", flush=True)


def require_nnunet() -> str:
    """nnunetv2's version, or exit with :data:`MISSING_EXIT` and the install hint on stderr."""
    try:
        importlib.import_module("nnunetv2")
    except ImportError as exc:
        print(f"{INSTALL_HINT} ({exc})", file=sys.stderr, flush=True)
        raise SystemExit(MISSING_EXIT) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return "unknown"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (nnU-Net's network init and, in-process, its augmentation)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan_and_preprocess(dataset_id: int, configuration: str, processes: int) -> Path:
    """Fingerprint, default plans and preprocessing of one configuration; the preprocessed folder."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    from ulmed.eval.nnunet.trainer import PLANS_IDENTIFIER

    name = convert_id_to_dataset_name(dataset_id)
    preprocessed = Path(str(nnUNet_preprocessed)) / name
    preprocessed.mkdir(parents=True, exist_ok=True)
    extract_fingerprint_dataset(dataset_id, num_processes=processes, check_dataset_integrity=False,
                                clean=True, verbose=False, show_progress_bar=False)
    # the planner sizes threads by nnUNet_n_proc_DA, which must be >= 1 there (0 = no augmentation workers)
    workers = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = str(max(1, int(workers or 1)))
    try:
        _, identifier = plan_experiment_dataset(dataset_id)
    finally:
        if workers is not None:
            os.environ["nnUNet_n_proc_DA"] = workers
    if identifier != PLANS_IDENTIFIER:
        raise RuntimeError(f"nnU-Net wrote plans {identifier!r}, expected {PLANS_IDENTIFIER!r}")
    preprocess_dataset(dataset_id, identifier, [configuration], [processes], verbose=False, show_progress_bar=False)
    return preprocessed


def plans_summary(trainer: Any) -> dict[str, Any]:
    """What nnU-Net planned for the configuration it trained (for the result)."""
    cm = trainer.configuration_manager
    arch = cm.network_arch_init_kwargs
    return {
        "configuration": trainer.configuration_name,
        "patch_size": [int(s) for s in cm.patch_size],
        "batch_size": int(cm.batch_size),
        "spacing": [float(s) for s in cm.spacing],
        "normalization": list(cm.normalization_schemes),
        "median_image_size": [float(s) for s in cm.median_image_size_in_voxels],
        "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
        "features_per_stage": [int(f) for f in arch.get("features_per_stage", [])],
        "trainer": type(trainer).__name__,
    }


def train(preprocessed: Path, configuration: str, schedule: dict[str, Any], device: Any) -> Any:
    """Train nnU-Net's trainer on the short schedule (fold ``all``); the finished trainer."""
    from ulmed.eval.nnunet.trainer import build_trainer, short_trainer

    cls = short_trainer(schedule["epochs"], schedule["iterations"], schedule["val_iterations"])
    trainer = build_trainer(cls, preprocessed, configuration, device)
    trainer.run_training()  # nnU-Net's perform_actual_validation is not called: the test split is scored instead
    return trainer


def predict(trainer: Any, images: list[str], out_dir: Path, mirroring: bool) -> None:
    """Predict ``images`` (one channel file each) into ``out_dir`` with nnU-Net's predictor."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from ulmed.eval.nnunet.trainer import trained_network

    network, checkpoint = trained_network(trainer)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=trainer.device.type == "cuda", device=trainer.device,
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                    [checkpoint["network_weights"]], trainer.dataset_json, type(trainer).__name__,
                                    checkpoint.get("inference_allowed_mirroring_axes"))
    out_dir.mkdir(parents=True, exist_ok=True)
    ending = trainer.dataset_json["file_ending"]
    names = [str(out_dir / Path(f).name[: -len(f"_0000{ending}")]) for f in images]
    predictor.predict_from_files_sequential([[f] for f in images], names, save_probabilities=False, overwrite=True)


def _device(name: str, threads: int | None) -> Any:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use device='cpu'")
    return torch.device(name)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """All three steps for one spec; plans, timings and losses."""
    version = require_nnunet()
    schedule = spec["schedule"]
    device = _device(schedule["device"], schedule.get("threads"))
    seed_everything(int(schedule["seed"]))
    say(f"nnU-Net {version}: planning and preprocessing {spec['configuration']}")
    t0 = time.perf_counter()
    preprocessed = plan_and_preprocess(int(spec["dataset_id"]), spec["configuration"], int(spec["processes"]))
    t1 = time.perf_counter()
    say(f"training {schedule['epochs']} x {schedule['iterations']} iterations on {device}")
    seed_everything(int(schedule["seed"]))
    trainer = train(preprocessed, spec["configuration"], schedule, device)
    t2 = time.perf_counter()
    say(f"predicting {len(spec['test_images'])} test cases")
    predict(trainer, list(spec["test_images"]), Path(spec["predictions"]), bool(schedule.get("mirroring", True)))
    t3 = time.perf_counter()
    losses = trainer.logger.get_value("train_losses", step=None)
    pseudo_dice = trainer.logger.get_value("ema_fg_dice", step=None)
    return {"nnunetv2": version, "device": str(device), "plans": plans_summary(trainer),
            "plan_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2), "test_s": round(t3 - t2, 2),
            "train_losses": [float(v) for v in losses], "pseudo_dice": [float(v) for v in pseudo_dice],
            "output_folder": str(trainer.output_folder)}


def main(argv: list[str] | None = None) -> int:
    """Read the spec named on the command line, run it, write its output JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ulmed.eval.nnunet.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    out = run(spec)
    tmp = Path(spec["output"]).with_suffix(".part")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, spec["output"])
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
